"""Memory stores mounted in the sandbox: directories the gateway keeps in step with the store.

A store attached to the session shows at ``/mnt/memory/<slug>`` in every command (bound
read-write or read-only by bubblewrap) and to the file tools. Its files live in the session
area (``AREA_DIR/memory/<slug>``), which only this server lays out. The gateway
(``gateway.tools.memory_sync``) drives the syncing around each tool call with two requests beside
``/mcp`` (same bearer token; through the tunnel for an on-prem sandbox), neither an MCP tool:

- ``GET /tether/memory/{slug}``: every entry of the mount with a token (the SHA-256 of a valid
  memory's text; ``!reason`` for what cannot be one: a symbolic link, a special file, more than
  ``MAX_FILE_BYTES``, not UTF-8), the ``base`` (what the mount and the store last agreed on),
  and the text of each memory that differs from it, within bounds (the gateway leaves a text not
  sent for the next sync); every path of the base is listed, so nothing skipped looks removed;
- ``PUT /tether/memory/{slug}``: files to write or remove, each only if the entry still has the
  token the gateway saw (a background process may have changed it since: then it is left for the
  next sync), and the new base (a path left keeps its old one: it is not the model's change).

The model writes here, so nothing is followed: every lookup is beneath the mount without
symlinks, files are read through descriptors and checked to be regular, and a write goes to a
new name first and is renamed into place. The base lives in the area's record
(``MEMORY_RECORD``), so a restarted server on the same workspace carries on where it stopped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from typing import Any

from sandbox_server import beneath
from sandbox_server.placement import Placement
from sandbox_server.workspace import (
    AREA_DIR,
    AREA_MEMORY,
    MEMORY_ACCESS,
    MEMORY_RECORD,
    read_memory_record,
    recorded_access,
)

PATH = "/tether/memory"
MAX_FILE_BYTES = 102_400
"""A memory's limit in the store; a bigger file is reported, not read."""
MAX_ENTRIES = 4000
MAX_DEPTH = 20
MAX_LISTING_BYTES = 8 << 20
"""The listing's paths and tokens, as JSON (a control character in a name takes six bytes)."""
MAX_TEXT_BYTES = 16 << 20
"""The texts one answer carries, as JSON; the rest are sent by later syncs."""
MAX_BODY_BYTES = 96 << 20
"""A full store (8 MiB) is up to 48 MiB as JSON, and the gateway echoes the listing's paths."""
SLUG = re.compile(r"^[a-z0-9_][a-z0-9._-]{0,71}$")
"""What the gateway's ``memory_slug`` makes: up to 64 characters, then ``-2``, ``-3``…"""
_RECORD_NAME = MEMORY_RECORD.removeprefix(AREA_DIR + "/")
_MOUNTS_NAME = AREA_MEMORY.removeprefix(AREA_DIR + "/")
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class MountError(Exception):
    """A request that cannot be served; the message says why."""


@dataclass
class Scan:
    tokens: dict[str, str]
    texts: dict[str, str]


def _text_token(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "!not UTF-8 text"
    return hashlib.sha256(data).hexdigest()


class MemoryMounts:
    """The mounted stores of one workspace, in its session area."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.ws = placement.ws
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the record

    def record(self) -> dict[str, Any]:
        """``{slug: {"access": ..., "base": {path: token}}}``; empty when missing or unreadable."""
        area = self.placement.area()
        try:
            return read_memory_record(area, _RECORD_NAME)
        finally:
            os.close(area)

    def _save(self, area: int, record: dict[str, Any]) -> None:
        temp = f".{_RECORD_NAME}.{secrets.token_hex(4)}"
        fd = os.open(
            temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=area
        )
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(record).encode())
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, _RECORD_NAME, src_dir_fd=area, dst_dir_fd=area)

    def _mount_dir(self, slug: str, access: str | None) -> int:
        """An ``O_PATH`` descriptor of the slug's directory; made (for ``access``) if missing."""
        area = self.placement.area()
        try:
            if access is None:
                return beneath.open_beneath(area, f"{_MOUNTS_NAME}/{slug}", _DIR, symlinks=False)
            with contextlib.suppress(FileExistsError):
                os.mkdir(_MOUNTS_NAME, 0o755, dir_fd=area)
            owner = self.ws.owner if access == "read_write" else None
            return beneath.makedirs_beneath(
                area, f"{_MOUNTS_NAME}/{slug}", 0o755, owner=owner, symlinks=False
            )
        finally:
            os.close(area)

    # ------------------------------------------------------------------ reading a mount

    def state(self, slug: str) -> dict[str, Any]:
        """What ``GET /tether/memory/{slug}`` answers."""
        with self._lock:
            entry = self.record().get(slug)
            if not isinstance(entry, dict):
                return {"mounted": False}
            try:
                top = self._mount_dir(slug, None)
            except OSError:
                return {"mounted": False}
            try:
                scan = _scan(top, entry.get("base") or {})
            finally:
                os.close(top)
            return {
                "mounted": True,
                "access": entry.get("access"),
                "base": entry.get("base") or {},
                "files": scan.tokens,
                "changed": scan.texts,
            }

    # ------------------------------------------------------------------ changing a mount

    def apply(
        self,
        slug: str,
        access: str,
        changes: dict[str, str | None],
        expect: dict[str, str | None],
        base: dict[str, str],
    ) -> dict[str, str]:
        """Write (text) or remove (None) each path of ``changes`` whose entry still has the
        ``expect``ed token (None: absent), then record ``base``; the paths left, and why."""
        if not SLUG.match(slug) or access not in MEMORY_ACCESS:
            raise MountError(f"not a memory mount: {slug!r} ({access!r})")
        with self._lock:
            top = self._mount_dir(slug, access)
            skipped: dict[str, str] = {}
            try:
                owner = self.ws.owner if access == "read_write" else None
                # Removals first: a file may give way to a directory of the same name.
                for path in sorted(changes, key=lambda p: changes[p] is not None):
                    reason = _change(top, path, changes[path], expect.get(path), owner)
                    if reason is not None:
                        skipped[path] = reason
            finally:
                os.close(top)
            area = self.placement.area()
            try:
                record = self.record()
                before = (record.get(slug) or {}).get("base") or {}
                kept = {path: before[path] for path in skipped if path in before}
                base = {path: t for path, t in base.items() if path not in skipped} | kept
                record[slug] = {"access": access, "base": base}
                self._save(area, record)
            finally:
                os.close(area)
            return skipped


def _utf8(name: str) -> bool:
    """Not UTF-8 (escaped by ``os.scandir``): neither a memory's path nor JSON, so left out."""
    return not any("\udc80" <= c <= "\udcff" for c in name)


def _json_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def _scan(top: int, base: dict[str, str]) -> Scan:
    """Every entry under the mount (not directories) with its token, within bounds, then each path
    of ``base`` the walk did not reach; and the texts of valid memories that differ from ``base``."""
    scan = Scan({}, {})
    listed = sent = 0
    walked = beneath.walk(top, lambda e: e.path.count("/") < MAX_DEPTH - 1 and _utf8(e.name))
    for entry in walked:
        mode = entry.stat.st_mode
        if stat.S_ISDIR(mode) or not _utf8(entry.name):
            continue
        path = entry.path
        listed += 2 * _json_size(path) + 72  # the key in ``files`` (and ``changed``) and a token
        if len(scan.tokens) >= MAX_ENTRIES or listed > MAX_LISTING_BYTES:
            break
        token, data = _read(entry.dir_fd, entry.name, mode)
        scan.tokens[path] = token
        if data is not None and token != base.get(path) and not token.startswith("!"):
            text = data.decode("utf-8")
            if sent + (size := _json_size(text)) <= MAX_TEXT_BYTES:
                scan.texts[path], sent = text, sent + size
    for path in base:
        if path not in scan.tokens and (found := _lookup(top, path)) is not None:
            scan.tokens[path] = found
    return scan


def _lookup(top: int, path: str) -> str | None:
    """The token of ``path``; None where the walk lists nothing (absent, a directory, a symlink on the way)."""
    try:
        parent = beneath.open_beneath(top, path.rpartition("/")[0] or ".", _DIR, symlinks=False)
        try:
            token = _current(parent, path.rpartition("/")[2])
        finally:
            os.close(parent)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
            return None
        token = f"!unreadable ({exc.strerror})"
    return None if token == "!a directory" else token


def _read(dir_fd: int, name: str, mode: int) -> tuple[str, bytes | None]:
    if stat.S_ISLNK(mode):
        return "!a symbolic link", None
    if not stat.S_ISREG(mode):
        return "!not a regular file", None
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError as exc:
        return f"!unreadable ({exc.strerror})", None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            return "!not a regular file", None
        if info.st_size > MAX_FILE_BYTES:
            return f"!{info.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit of a memory", None
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return f"!over the {MAX_FILE_BYTES}-byte limit of a memory", None
    return _text_token(data), data


def _current(parent: int, leaf: str) -> str | None:
    """The token of ``leaf`` in ``parent`` now (None: nothing there); a directory is ``!dir``."""
    try:
        info = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(info.st_mode):
        return "!a directory"
    return _read(parent, leaf, info.st_mode)[0]


def _change(
    top: int, path: str, text: str | None, expect: str | None, owner: tuple[int, int] | None
) -> str | None:
    """Apply one change beneath ``top``; why not, or None when done."""
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\x00" in path or len(parts) > MAX_DEPTH:
        return "not a relative path"
    parent_name, leaf = "/".join(parts[:-1]), parts[-1]
    try:
        if text is None:
            parent = beneath.open_beneath(top, parent_name or ".", _DIR, symlinks=False)
        else:
            parent = beneath.makedirs_beneath(top, parent_name, 0o755, owner=owner, symlinks=False)
    except FileNotFoundError:
        return None if text is None and expect is None else "its directory is gone"
    except OSError as exc:
        return f"a parent is not a directory ({exc.strerror})"
    try:
        if _current(parent, leaf) != expect:
            return "changed in the sandbox meanwhile"
        if text is None:
            os.unlink(leaf, dir_fd=parent)
            return None
        _replace(parent, leaf, text.encode("utf-8"), owner)
        return None
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(parent)


def _replace(parent: int, leaf: str, data: bytes, owner: tuple[int, int] | None) -> None:
    temp = f".tether-{secrets.token_hex(6)}"
    fd = os.open(
        temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if owner is not None:
                beneath.chown_if_ours(f.fileno(), owner)
        os.rename(temp, leaf, src_dir_fd=parent, dst_dir_fd=parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=parent)
        raise


def mount_fds(workspace_fd: int) -> list[tuple[str, str, int]]:
    """``(slug, access, O_PATH descriptor)`` of each mounted store, for the command's binds;
    looked up per command beneath the workspace, never through a symlink."""
    record = read_memory_record(workspace_fd)
    mounts: list[tuple[str, str, int]] = []
    for slug in sorted(record):
        access = recorded_access(record, slug)
        if not SLUG.match(slug) or access is None:
            continue
        try:
            fd = beneath.open_beneath(workspace_fd, f"{AREA_MEMORY}/{slug}", _DIR, symlinks=False)
        except OSError:
            continue
        mounts.append((slug, access, fd))
    return mounts
