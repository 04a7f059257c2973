"""Map model-visible paths onto a host workspace directory, and refuse anything outside it.

The model sees its workspace as ``/workspace`` (``WORKSPACE_MOUNT``), the same path
the bubblewrap sandbox will bind it to, so paths the file tools accept and report
stay valid for ``bash`` too. The host location of the workspace never reaches the
model.

Containment is decided on *resolved* paths: every candidate is passed through
``os.path.realpath`` (which follows symlinks) and compared with the resolved root,
so ``..`` segments and symlinks pointing elsewhere are caught however they are
spelled. A check on a path is only as good as the moment it is made, so the file
tools also verify what they actually opened (``verify_open_fd``), which closes the
window in which a symlink could be swapped in between check and open.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

WORKSPACE_MOUNT = "/workspace"


class WorkspaceError(Exception):
    """A path the model gave cannot be used; the message is written for the model."""


@dataclass(frozen=True)
class Workspace:
    """A workspace root on the host (always stored resolved) plus the path rules around it."""

    root: Path

    @classmethod
    def open(cls, root: Path, *, create: bool = True) -> Workspace:
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
        return cls(root=resolved)

    def contains(self, host_path: str | os.PathLike[str]) -> bool:
        """Whether ``host_path`` (already resolved) is the root or lies beneath it."""
        path = os.fspath(host_path)
        root = os.fspath(self.root)
        return path == root or path.startswith(root.rstrip(os.sep) + os.sep)

    def resolve(self, path: str) -> Path:
        """Turn a model-supplied path into a resolved host path inside the workspace.

        Relative paths are taken from the workspace root; absolute paths must lie
        under ``/workspace``. Symlinks are followed and the result must still be
        inside the root. The path need not exist (``write`` creates files).
        """
        if not path:
            raise WorkspaceError("Path is empty; give a path relative to /workspace or under /workspace.")
        if "\x00" in path:
            raise WorkspaceError("Path contains a NUL byte.")
        relative = self._relative_part(path)
        candidate = os.path.join(self.root, relative) if relative else os.fspath(self.root)
        resolved = os.path.realpath(candidate)
        if not self.contains(resolved):
            raise WorkspaceError(
                f"Access denied: {path} resolves outside the workspace ({WORKSPACE_MOUNT}); "
                "symlinks may not point out of it."
            )
        return Path(resolved)

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
        if relative == ".":
            return WORKSPACE_MOUNT
        return f"{WORKSPACE_MOUNT}/{Path(relative).as_posix()}"

    def verify_open_fd(self, fd: int, shown_as: str) -> None:
        """Check that an open file descriptor really refers to something in the workspace.

        ``resolve`` checks a name; between that check and ``open`` a directory on
        the way could be replaced by a symlink (once ``bash`` can run, the model can
        do that). The kernel's own record of what the descriptor points at settles
        it. Where ``/proc`` is unavailable the check is skipped.
        """
        try:
            actual = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return
        if not self.contains(actual):
            raise WorkspaceError(
                f"Access denied: {shown_as} resolves outside the workspace ({WORKSPACE_MOUNT})."
            )
