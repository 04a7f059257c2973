"""Map model-visible paths onto a host workspace directory, and refuse anything outside it.

The model sees its workspace as ``/workspace`` (``WORKSPACE_MOUNT``), the same path
the bubblewrap sandbox will bind it to, so paths the file tools accept and report
stay valid for ``bash`` too. The host location of the workspace never reaches the
model.

Two layers. ``relative`` applies the model-facing rules to the *spelling* of a path
(relative to ``/workspace`` or absolute under it, no leading ``..``) and gives the path
relative to the root. Opening is then never done by host path: the model can swap a
directory for a symlink between any check and any open, so every lookup starts from a
descriptor of the root and is resolved beneath it by the kernel (``beneath``). Symlinks
that stay inside are followed; one that leads out, whenever it appears, makes the lookup
fail, reported as ``WorkspaceError`` ("... outside the workspace").

``owner``, when set (a root server whose sandbox runs as an unprivileged uid), receives
every file and directory the tools create, so the sandbox can change them afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox_server import beneath

WORKSPACE_MOUNT = "/workspace"
SESSION_MOUNT = "/mnt/session"
"""Where the session's read-only resources show inside the sandbox (``sandbox_server.placement``)."""
AREA_DIR = ".tether-session"
"""The workspace entry holding them, out of the agent's reach: ``AREA_DIR/mnt`` is bound read-only
at ``SESSION_MOUNT``, the entry itself is masked in the sandbox and refused by the file tools."""
AREA_MOUNTED = f"{AREA_DIR}/mnt"
MEMORY_MOUNT = "/mnt/memory"
"""Where the session's memory stores show, one directory each (``sandbox_server.memory_mounts``)."""
AREA_MEMORY = f"{AREA_DIR}/memory"
MEMORY_RECORD = f"{AREA_DIR}/memory.json"
"""Which stores are mounted and how (``{slug: {"access": ..., "base": ...}}``); only the server writes it."""
MAX_RECORD_BYTES = 16 << 20
MEMORY_ACCESS = ("read_write", "read_only")
_MOUNTS = ((SESSION_MOUNT, AREA_MOUNTED), (MEMORY_MOUNT, AREA_MEMORY))


class WorkspaceError(Exception):
    """A path the model gave cannot be used; the message is written for the model."""


@dataclass(frozen=True)
class Workspace:
    """A workspace root on the host (always stored resolved) plus the path rules around it."""

    root: Path
    owner: tuple[int, int] | None = None
    """``(uid, gid)`` given everything the tools create; None leaves it to whoever runs the server."""

    @classmethod
    def open(cls, root: Path, *, create: bool = True, owner: tuple[int, int] | None = None) -> Workspace:
        """Return the workspace at ``root``, creating the directory when asked to.

        The root is resolved once here so later comparisons are between two
        resolved paths (a root reached through a symlink, like macOS ``/tmp``,
        would otherwise make every path look like an escape).
        """
        if create:
            root.mkdir(parents=True, exist_ok=True)
        resolved = Path(os.path.realpath(root))
        if not resolved.is_dir():
            raise NotADirectoryError(f"workspace root is not a directory: {root}")
        return cls(root=resolved, owner=owner)

    def contains(self, host_path: str | os.PathLike[str]) -> bool:
        """Whether ``host_path`` (already resolved) is the root or lies beneath it."""
        path = os.fspath(host_path)
        root = os.fspath(self.root)
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    def resolve(self, path: str) -> Path:
        """The resolved host path a model-supplied path names right now (for messages and tests).

        Relative paths are taken from the workspace root; absolute paths must lie
        under ``/workspace``. Symlinks are followed and the result must still be
        inside the root. The path need not exist. A name checked now may lead
        elsewhere a moment later, so nothing opens the result: opening goes through
        ``open_path`` and friends.
        """
        relative = self.relative(path)
        candidate = os.path.join(self.root, relative) if relative else os.fspath(self.root)
        resolved = os.path.realpath(candidate)
        if not self.contains(resolved):
            raise self.escape(path)
        return Path(resolved)

    def relative(self, path: str) -> str:
        """The model's ``path`` relative to the root (``""`` for the root), after the spelling rules."""
        if not path:
            raise WorkspaceError("Path is empty; give a path relative to /workspace or under /workspace.")
        if "\x00" in path:
            raise WorkspaceError("Path contains a NUL byte.")
        if path.startswith("/"):
            normal = posixpath.normpath(path)
            for mount, held in _MOUNTS:
                if normal == mount or normal.startswith(mount + "/"):
                    return held + normal[len(mount) :]
        relative = self._relative_part(path)
        if relative == AREA_DIR or relative.startswith(AREA_DIR + "/"):
            raise WorkspaceError(f"{path} is reserved; the session's resources are under {SESSION_MOUNT}.")
        return relative

    def require_writable(self, relative: str, shown: str) -> None:
        """The session's resources are read-only to the tools, as to the sandbox, and so is a
        memory store mounted ``read_only``: refused when spelled so, and when the path leads
        there through a symlink (the open is checked again, race-free, by
        ``require_outside_area``)."""
        if (relative == AREA_DIR or relative.startswith(AREA_DIR + "/")) and not self._writable_memory(
            relative
        ):
            raise self.read_only(shown)
        try:
            leads_in = self._in_area(self.resolve(shown))
        except OSError:  # a path changing under the lookup: the open's own check decides
            leads_in = False
        if leads_in:
            raise self.read_only(shown)

    def require_outside_area(self, fd: int, shown: str) -> None:
        """Refuse a descriptor opened for writing that lies in the session area (other than a
        writable memory store). What it names cannot move: only this server changes the area's
        layout, and the sandbox never sees it unmasked."""
        if self._in_area(os.readlink(f"/proc/self/fd/{fd}")):
            raise self.read_only(shown)

    def _in_area(self, host_path: str | os.PathLike[str]) -> bool:
        area = os.path.join(self.root, AREA_DIR)
        path = os.fspath(host_path)
        if path != area and not path.startswith(area + os.sep):
            return False
        return not self._writable_memory(Path(path).relative_to(self.root).as_posix())

    def _writable_memory(self, relative: str) -> bool:
        """Whether ``relative`` lies inside (not at) a memory store mounted ``read_write``."""
        parts = relative.split("/")
        if len(parts) < 4 or "/".join(parts[:2]) != AREA_MEMORY:
            return False
        return memory_access(self, parts[2]) == "read_write"

    @staticmethod
    def read_only(shown: str) -> WorkspaceError:
        if shown.startswith(MEMORY_MOUNT + "/"):
            return WorkspaceError(f"{shown} is read-only: that memory store is mounted read-only.")
        return WorkspaceError(f"{shown} is read-only: {SESSION_MOUNT} holds the session's resources.")

    @staticmethod
    def escape(path: str) -> WorkspaceError:
        return WorkspaceError(
            f"Access denied: {path} resolves outside the workspace ({WORKSPACE_MOUNT}); "
            "symlinks may not point out of it."
        )

    def mount_path(self, relative: str) -> str:
        """The ``/workspace/...`` spelling of a path relative to the root."""
        for mount, held in _MOUNTS:
            if relative == held or relative.startswith(held + "/"):
                return mount + relative[len(held) :]
        return f"{WORKSPACE_MOUNT}/{relative}" if relative else WORKSPACE_MOUNT

    def _relative_part(self, path: str) -> str:
        """The part of ``path`` below the workspace, lexically normalised and checked."""
        if path.startswith("/"):
            normal = posixpath.normpath(path)
            if normal == WORKSPACE_MOUNT:
                return ""
            if not normal.startswith(WORKSPACE_MOUNT + "/"):
                raise WorkspaceError(
                    f"Access denied: {path} is outside the workspace; "
                    f"absolute paths must be under {WORKSPACE_MOUNT}."
                )
            return normal[len(WORKSPACE_MOUNT) + 1 :]
        normal = posixpath.normpath(path)
        if normal == ".":
            return ""
        if normal == ".." or normal.startswith("../"):
            raise WorkspaceError(f"Access denied: {path} points outside the workspace ({WORKSPACE_MOUNT}).")
        return normal

    def model_path(self, host_path: str | os.PathLike[str]) -> str:
        """The ``/workspace/...`` spelling of a host path inside the workspace."""
        relative = os.path.relpath(os.fspath(host_path), self.root)
        return self.mount_path("" if relative == "." else Path(relative).as_posix())

    # ----------------------------------------------------------------- lookups beneath the root

    def open_root(self) -> int:
        """An ``O_PATH`` descriptor of the root, for lookups beneath it (opened per use: a
        filesystem may be mounted on the root after this object was made)."""
        return os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def open_path(
        self, relative: str, flags: int, mode: int = 0o666, *, shown: str, symlinks: bool = True
    ) -> int:
        """``open`` of ``relative`` beneath the root; ``WorkspaceError`` (naming ``shown``) if it leads out."""
        root = self.open_root()
        try:
            return beneath.open_beneath(root, relative, flags, mode, symlinks=symlinks)
        except OSError as exc:
            raise self._escape_or(exc, shown) from None
        finally:
            os.close(root)

    def stat_path(self, relative: str, *, shown: str, follow_symlinks: bool = True) -> os.stat_result:
        root = self.open_root()
        try:
            return beneath.stat_beneath(root, relative, follow_symlinks=follow_symlinks)
        except OSError as exc:
            raise self._escape_or(exc, shown) from None
        finally:
            os.close(root)

    def makedirs(self, relative: str, *, shown: str) -> int:
        """Create the missing directories of ``relative`` (given to ``owner``); an ``O_PATH`` descriptor of it."""
        root = self.open_root()
        try:
            return beneath.makedirs_beneath(root, relative, owner=self.owner)
        except OSError as exc:
            raise self._escape_or(exc, shown) from None
        finally:
            os.close(root)

    def hand_over(self, fd: int) -> None:
        """Give a file the tools created (open as ``fd``) to ``owner``, if there is one."""
        if self.owner is not None:
            beneath.chown_if_ours(fd, self.owner)

    def _escape_or(self, exc: OSError, shown: str) -> Exception:
        """``WorkspaceError`` for a lookup the kernel stopped at the root; the error itself otherwise."""
        return self.escape(shown) if exc.errno == errno.EXDEV else exc


def read_memory_record(dir_fd: int, name: str = MEMORY_RECORD) -> dict[str, Any]:
    """The server's record of the mounted memory stores (``{slug: {"access": ..., "base": ...}}``),
    read beneath ``dir_fd`` never through a symlink and only from a regular file; empty when it
    is missing or unreadable. One reader for the file tools, the binds and the mounts."""
    try:
        fd = beneath.open_beneath(dir_fd, name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, symlinks=False)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return {}
        try:
            record = json.loads(f.read(MAX_RECORD_BYTES) or b"{}")
        except ValueError:
            return {}
    return record if isinstance(record, dict) else {}


def recorded_access(record: dict[str, Any], slug: str) -> str | None:
    """How ``record`` says ``slug`` is mounted (one of ``MEMORY_ACCESS``), or None."""
    entry = record.get(slug)
    access = entry.get("access") if isinstance(entry, dict) else None
    return access if access in MEMORY_ACCESS else None


def memory_access(ws: Workspace, slug: str) -> str | None:
    """How the memory store mounted as ``slug`` is mounted (``read_write``/``read_only``), from
    the server's record in the area; None when it is not mounted (or the record is unreadable)."""
    root = ws.open_root()
    try:
        return recorded_access(read_memory_record(root), slug)
    finally:
        os.close(root)
