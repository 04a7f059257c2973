"""Finding and opening the files a tool works on, always beneath the workspace root.

Everything goes through ``Workspace.open_path`` (resolved beneath the root by the kernel)
or through the descriptors of ``beneath.walk``, never through a host path: a directory
swapped for a symlink at any moment leads nowhere outside. Files are opened
``O_NONBLOCK`` and checked before use, so a FIFO cannot hang a tool.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator

from sandbox_server import beneath
from sandbox_server.file_tools.errors import ToolError
from sandbox_server.workspace import AREA_DIR, Workspace, WorkspaceError


def join(directory: str, name: str) -> str:
    """Join paths relative to the root (``""`` is the root itself)."""
    return f"{directory}/{name}" if directory else name


def open_regular(ws: Workspace, relative: str, shown: str, flags: int) -> int:
    """Open ``relative`` (inside symlinks followed) and insist on a regular file.

    A file this call creates (``O_CREAT``) is handed to the workspace's owner.
    """
    try:
        fd = ws.open_path(relative, flags | os.O_NONBLOCK, 0o666, shown=shown)
    except FileNotFoundError:
        raise ToolError(f"File does not exist: {shown}") from None
    except IsADirectoryError:
        raise ToolError(f"{shown} is a directory, not a file.") from None
    except NotADirectoryError:
        raise ToolError(f"{shown}: a parent of this path is not a directory.") from None
    except PermissionError:
        raise ToolError(f"Permission denied: {shown}") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ToolError(f"{shown} is not a regular file.") from None
        raise ToolError(f"Cannot open {shown}: {exc.strerror}") from None
    if flags & (os.O_WRONLY | os.O_RDWR):
        try:  # a symlink in the workspace may lead into the read-only session area
            ws.require_outside_area(fd, shown)
        except WorkspaceError:
            os.close(fd)
            raise
    return _checked(ws, fd, shown, created=bool(flags & os.O_CREAT))


def _checked(ws: Workspace, fd: int, shown: str, *, created: bool = False) -> int:
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ToolError(f"{shown} is a directory, not a file.")
        if not stat.S_ISREG(mode):
            raise ToolError(f"{shown} is not a regular file.")
        if created:
            ws.hand_over(fd)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def search_root(ws: Workspace, path: str | None) -> tuple[str, os.stat_result | None]:
    """The optional ``path`` argument of glob/grep, relative to the root, and what it is now.

    The status is None for the root itself (the default).
    """
    if path is None or path == "":
        return "", None
    relative = ws.relative(path)
    try:
        return relative, ws.stat_path(relative, shown=path)
    except (FileNotFoundError, NotADirectoryError):
        raise ToolError(f"Path does not exist: {path}") from None


def regular_files(
    ws: Workspace, start: str, skip_dirs: frozenset[str] = frozenset()
) -> Iterator[tuple[beneath.WalkEntry, os.stat_result]]:
    """``(entry, status)`` of every regular file beneath the directory ``start``, depth first by name.

    ``start`` (relative to the root) may not exist (``FileNotFoundError``) or lead out
    (``WorkspaceError``). Symlinked directories are never entered; a symlinked file is
    yielded, with its target's status, only when it resolves to a regular file inside the
    workspace. Entries that cannot be read are skipped: a search should not fail on one.
    The entry's descriptor is valid until the next item is asked for.
    """
    start_fd = ws.open_path(start, os.O_RDONLY | os.O_DIRECTORY, shown=ws.mount_path(start))
    try:
        for entry in beneath.walk(
            start_fd, lambda e: e.name not in skip_dirs and join(start, e.path) != AREA_DIR
        ):
            info = entry.stat
            if stat.S_ISLNK(info.st_mode):
                relative = join(start, entry.path)
                try:
                    info = ws.stat_path(relative, shown=ws.mount_path(relative))
                except (OSError, WorkspaceError):
                    continue
            if stat.S_ISREG(info.st_mode):
                yield entry, info
    finally:
        os.close(start_fd)


def open_entry(ws: Workspace, start: str, entry: beneath.WalkEntry) -> int | None:
    """Open a file ``regular_files`` yielded for reading; None if it is gone or no longer a regular file."""
    shown = ws.mount_path(join(start, entry.path))
    try:
        if stat.S_ISLNK(entry.stat.st_mode):
            fd = ws.open_path(join(start, entry.path), os.O_RDONLY | os.O_NONBLOCK, shown=shown)
        else:
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(entry.name, flags, dir_fd=entry.dir_fd)
        return _checked(ws, fd, shown)
    except (OSError, WorkspaceError, ToolError):
        return None
