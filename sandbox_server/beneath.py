"""Open paths beneath a directory descriptor, with the kernel refusing every way out.

Whoever opens a file on the model's behalf (the file tools, the gateway's files API, the
quota walker) must never be led out of the workspace, and the model can rewrite its
workspace at any moment: swap a directory for a symlink to ``/`` between our check and our
open, say. Checking a resolved path string and then opening it again by name is therefore
never safe. Instead every lookup here starts from a directory descriptor and is resolved
*by the kernel* beneath it:

* ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` (Linux 5.6+): symlinks
  that stay beneath the directory are followed, anything that would leave it (``..`` past
  the top, an absolute symlink, a ``/proc`` magic link) fails with ``EXDEV``/``ELOOP``;
* where ``openat2`` is missing (``ENOSYS``, or ``EPERM`` from an old seccomp filter) the
  same rules are applied one component at a time: every component is opened
  ``O_NOFOLLOW`` relative to the descriptor of the directory before it, ``..`` pops our own
  stack of descriptors, and a symlink is read (``readlinkat`` on the link itself) and its
  target walked the same way, so nothing the kernel follows by itself can lead out.

``walk`` (and ``walk_stats``, its faster cousin for counting) lists a tree through
descriptors only, never a path string, so no depth or ``PATH_MAX`` limit applies, and holds
one directory open whatever the depth.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
_MAX_SYMLINKS = 40  # the kernel's own limit before ELOOP
_EAGAIN_RETRIES = 16
_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_state: bool | None = None
"""None until probed; False forces the component-by-component fallback (``use_openat2``)."""


def use_openat2(enabled: bool | None) -> None:
    """Force the fallback (``False``), or probe the kernel again on next use (``None``); for tests."""
    global _openat2_state
    _openat2_state = enabled


def openat2_available() -> bool:
    """Whether this kernel (and any seccomp filter around us) lets us call ``openat2``."""
    global _openat2_state
    if _openat2_state is None:
        try:
            os.close(_openat2(os.open("/", _DIR_PATH), ".", _DIR_PATH, 0, RESOLVE_BENEATH, close_dir=True))
            _openat2_state = True
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
            _openat2_state = False
    return _openat2_state


def _openat2(dir_fd: int, path: str, flags: int, mode: int, resolve: int, *, close_dir: bool = False) -> int:
    """The raw syscall, retried on ``EAGAIN`` (a concurrent rename made the kernel unsure of ``..``)."""
    creates = flags & os.O_CREAT or flags & os.O_TMPFILE == os.O_TMPFILE
    how = _OpenHow(flags | os.O_CLOEXEC, mode if creates else 0, resolve)  # openat2 rejects a stray mode
    encoded = os.fsencode(path)
    try:
        for _ in range(_EAGAIN_RETRIES):
            fd = _libc.syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(encoded),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
            if fd >= 0:
                return int(fd)
            code = ctypes.get_errno()
            if code != errno.EAGAIN:
                break
        raise OSError(code, os.strerror(code), path)
    finally:
        if close_dir:
            os.close(dir_fd)


def _components(relative: str) -> list[str]:
    if relative.startswith("/"):
        raise OSError(errno.EXDEV, "absolute path", relative)
    return [part for part in relative.split("/") if part not in ("", ".")]


def open_beneath(dir_fd: int, relative: str, flags: int, mode: int = 0o666, *, symlinks: bool = True) -> int:
    """``openat(dir_fd, relative, flags, mode)``, resolved beneath ``dir_fd`` by the kernel.

    Symlinks that stay beneath are followed unless ``symlinks`` is False (then any symlink
    on the way fails with ``ELOOP``); ``O_NOFOLLOW`` in ``flags`` refuses only a final one.
    A way out fails with ``EXDEV`` (or ``ELOOP`` for a ``/proc`` magic link). The
    descriptor is always ``O_CLOEXEC``.
    """
    if openat2_available():
        resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (0 if symlinks else RESOLVE_NO_SYMLINKS)
        return _openat2(dir_fd, relative or ".", flags, mode, resolve)
    return _open_by_components(dir_fd, relative, flags, mode, symlinks)


def _open_by_components(dir_fd: int, relative: str, flags: int, mode: int, symlinks: bool) -> int:
    """The fallback: each component ``O_NOFOLLOW`` from the directory before it; symlinks read and walked by us."""
    pending = _components(relative)
    stack = [os.open(".", _DIR_PATH, dir_fd=dir_fd)]  # descriptors from dir_fd down to where we are
    followed = 0
    try:
        while True:
            if not pending:
                return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
            name = pending.pop(0)
            last = not pending
            if name == "..":
                if len(stack) == 1:
                    raise OSError(errno.EXDEV, "leads out of the directory", relative)
                os.close(stack.pop())
                continue
            if last:
                try:
                    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=stack[-1])
                except OSError as exc:
                    # ELOOP: a symlink (O_NOFOLLOW); ENOTDIR too when O_DIRECTORY met one.
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or flags & os.O_NOFOLLOW:
                        raise
                    target = _symlink_target(stack[-1], name)
                    if target is None:
                        raise
                else:
                    if flags & os.O_NOFOLLOW or not (
                        flags & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode)
                    ):
                        return fd
                    try:  # O_PATH opened the symlink itself, which we were asked to follow
                        target = os.readlink("", dir_fd=fd)
                    finally:
                        os.close(fd)
            else:
                fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
                kind = stat.S_IFMT(os.fstat(fd).st_mode)
                if kind == stat.S_IFDIR:
                    stack.append(fd)
                    continue
                try:
                    if kind != stat.S_IFLNK:
                        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), relative)
                    target = os.readlink("", dir_fd=fd)  # the link we opened, not whatever the name is now
                finally:
                    os.close(fd)
            if not symlinks:
                raise OSError(errno.ELOOP, "a symbolic link is on the way", relative)
            followed += 1
            if followed > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), relative)
            pending[:0] = _components(target)  # an absolute target leaves: EXDEV
    finally:
        for fd in stack:
            os.close(fd)


def _symlink_target(dir_fd: int, name: str) -> str | None:
    """The target of the symlink ``name`` in ``dir_fd``, or None when ``name`` is not (or no longer) one."""
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISLNK(os.fstat(fd).st_mode):
            return None
        return os.readlink("", dir_fd=fd)
    finally:
        os.close(fd)


def stat_beneath(dir_fd: int, relative: str, *, follow_symlinks: bool = True) -> os.stat_result:
    """``stat`` (``lstat`` for the last component unless ``follow_symlinks``) of a path beneath ``dir_fd``."""
    flags = os.O_PATH | (0 if follow_symlinks else os.O_NOFOLLOW)
    fd = open_beneath(dir_fd, relative, flags)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def makedirs_beneath(
    dir_fd: int,
    relative: str,
    mode: int = 0o777,
    *,
    owner: tuple[int, int] | None = None,
    symlinks: bool = True,
) -> int:
    """Create the missing directories of ``relative`` beneath ``dir_fd``; return an ``O_PATH`` descriptor of the last.

    Each directory is made with ``mkdirat`` in a parent opened beneath, which never follows
    a final symlink, so nothing is created outside whatever is swapped in meanwhile. New
    directories are ``fchown``ed to ``owner`` when given. ``FileExistsError`` or
    ``NotADirectoryError`` mean a component is not a directory; with ``symlinks`` False a
    symlink anywhere on the way fails the call (``ELOOP``).
    """
    parts = _components(relative)
    existing = len(parts)
    while True:  # the deepest directory that exists (usually the whole path: one lookup)
        try:
            fd = open_beneath(dir_fd, "/".join(parts[:existing]), _DIR_PATH, symlinks=symlinks)
            break
        except FileNotFoundError:
            if existing == 0:
                raise
            existing -= 1
    for depth in range(existing, len(parts)):
        try:
            os.mkdir(parts[depth], mode, dir_fd=fd)
            if owner is not None:
                chown_created(fd, parts[depth], owner)
        except FileExistsError:
            pass  # made by someone else meanwhile, or not a directory: the open below says which
        finally:
            os.close(fd)
        # Looked up again from the top, so a ``..`` or a swapped-in symlink is judged by the kernel.
        fd = open_beneath(dir_fd, "/".join(parts[: depth + 1]), _DIR_PATH, symlinks=symlinks)
    return fd


def chown_created(dir_fd: int, name: str, owner: tuple[int, int]) -> None:
    """Give the directory we just made as ``name`` in ``dir_fd`` to ``owner``, through a descriptor of it."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        chown_if_ours(fd, owner)
    finally:
        os.close(fd)


def chown_if_ours(fd: int, owner: tuple[int, int]) -> None:
    """``fchown`` what ``fd`` refers to to ``owner`` if this process owns it (it made it).

    Something another user owns is left alone: the tools hand over what they create, they
    never take a file away from someone.
    """
    info = os.fstat(fd)
    if info.st_uid == os.geteuid() and (info.st_uid, info.st_gid) != owner:
        os.fchown(fd, *owner)


def unlink_beneath(dir_fd: int, relative: str, *, symlinks: bool = True) -> None:
    """Remove the file ``relative`` (never a directory) through a descriptor of its parent opened beneath.

    ``unlinkat`` removes a final symlink itself, never what it points to.
    """
    parts = _components(relative)
    if not parts or parts[-1] == "..":
        raise OSError(errno.EINVAL, "not a file name", relative)
    parent = open_beneath(dir_fd, "/".join(parts[:-1]), _DIR_PATH, symlinks=symlinks)
    try:
        os.unlink(parts[-1], dir_fd=parent)
    finally:
        os.close(parent)


# --------------------------------------------------------------------------- walking a tree


class WalkEntry(NamedTuple):
    """One entry of a walk: ``dir_fd`` is its directory, valid until the walk moves on."""

    dir_fd: int
    parent: str
    """The directory's path relative to the walk's top, ``""`` or ending in ``/``."""
    name: str
    stat: os.stat_result
    """``lstat``: a symlink is described, never followed."""

    @property
    def path(self) -> str:
        return self.parent + self.name


Descend = Callable[[WalkEntry], bool]
"""Asked before a walk enters a directory (never a symlink); False skips its contents."""

_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class _Level:
    name: str
    dev: int
    ino: int


class _Cursor:
    """Where a walk is: one open directory, and the names and identities of the way down to it.

    Only one directory is held open whatever the depth: ``leave`` climbs back with ``..``
    and checks it arrived where it came from (the model may have moved the directory
    meanwhile); if not, it reopens the way down from the top by name, ``O_NOFOLLOW`` and
    identity-checked at each step, and drops the levels it can no longer reach.
    """

    def __init__(self, top_fd: int) -> None:
        self.top_fd = top_fd
        self.fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=top_fd)
        info = os.fstat(self.fd)
        self.levels = [_Level("", info.st_dev, info.st_ino)]

    def enter(self, name: str, expected: os.stat_result) -> bool:
        """Move into the subdirectory ``name`` if it is still the one ``expected`` describes."""
        try:
            child = os.open(name, _READ_DIR, dir_fd=self.fd)
        except OSError:
            return False
        info = os.fstat(child)
        if (info.st_dev, info.st_ino) != (expected.st_dev, expected.st_ino):
            os.close(child)
            return False
        os.close(self.fd)
        self.fd = child
        self.levels.append(_Level(name, info.st_dev, info.st_ino))
        return True

    def leave(self) -> int:
        """Move up one level; returns the depth now reached (0 is the top), which may be less."""
        self.levels.pop()
        target = self.levels[-1]
        with contextlib.suppress(OSError):
            parent = os.open("..", _DIR_PATH, dir_fd=self.fd)
            if _same(parent, target):
                os.close(self.fd)
                self.fd = parent
                return len(self.levels) - 1
            os.close(parent)
        os.close(self.fd)
        self.fd = os.open(".", _DIR_PATH, dir_fd=self.top_fd)
        for depth, level in enumerate(self.levels[1:], start=1):
            try:
                child = os.open(level.name, _DIR_PATH | os.O_NOFOLLOW, dir_fd=self.fd)
            except OSError:
                child = None
            if child is not None and not _same(child, level):
                os.close(child)
                child = None
            if child is None:
                del self.levels[depth:]  # moved away: what is left of it is not beneath this path
                break
            os.close(self.fd)
            self.fd = child
        return len(self.levels) - 1

    def close(self) -> None:
        os.close(self.fd)


def _same(fd: int, level: _Level) -> bool:
    info = os.fstat(fd)
    return (info.st_dev, info.st_ino) == (level.dev, level.ino)


def walk(top_fd: int, descend: Descend | None = None) -> Iterator[WalkEntry]:
    """Every entry beneath the directory ``top_fd``, depth first in name order, through descriptors only.

    A directory is yielded before its contents, and entered (never through a symlink) when
    ``descend`` is absent or returns True for it; one that cannot be opened or listed is
    yielded but not entered. Entries that vanish before they are reached are skipped.
    ``top_fd`` is neither closed nor moved. Each directory's names are held in memory
    while the walk is beneath it.
    """
    cursor = _Cursor(top_fd)
    try:
        pending = [(_names(cursor.fd), "")]  # per level: names not yet yielded (reversed), prefix
        while pending:
            names, prefix = pending[-1]
            if not names:
                pending.pop()
                if pending:
                    del pending[cursor.leave() + 1 :]
                continue
            name = names.pop()
            try:
                info = os.lstat(name, dir_fd=cursor.fd)
            except OSError:
                continue
            entry = WalkEntry(cursor.fd, prefix, name, info)
            yield entry
            if not stat.S_ISDIR(info.st_mode) or (descend is not None and not descend(entry)):
                continue
            if cursor.enter(name, info):
                try:
                    pending.append((_names(cursor.fd), f"{prefix}{name}/"))
                except OSError:
                    del pending[cursor.leave() + 1 :]
    finally:
        cursor.close()


def _names(fd: int) -> list[str]:
    """The directory's names, in reverse order (the walk pops them from the end)."""
    with os.scandir(fd) as entries:
        return sorted((entry.name for entry in entries), reverse=True)


def walk_stats(top_fd: int, descend: Descend | None = None) -> Iterator[os.stat_result]:
    """The ``lstat`` of every entry beneath ``top_fd``, in directory order: ``walk`` for counting.

    Each directory is read in one pass and only its subdirectories are remembered, so this
    costs about what ``os.scandir`` over paths does, with ``walk``'s guarantees.
    """
    cursor = _Cursor(top_fd)
    try:
        top: list[tuple[str, os.stat_result]] = []
        pending = [(top, "")]  # per level: subdirectories still to enter, and the level's prefix
        yield from _read(cursor.fd, "", top, descend)
        while pending:
            subdirs, prefix = pending[-1]
            if not subdirs:
                pending.pop()
                if pending:
                    del pending[cursor.leave() + 1 :]
                continue
            name, info = subdirs.pop()
            if not cursor.enter(name, info):
                continue
            inner: list[tuple[str, os.stat_result]] = []
            pending.append((inner, f"{prefix}{name}/"))
            with contextlib.suppress(OSError):  # unlistable: left (empty) on the next turn
                yield from _read(cursor.fd, pending[-1][1], inner, descend)
    finally:
        cursor.close()


def _read(
    fd: int, prefix: str, subdirs: list[tuple[str, os.stat_result]], descend: Descend | None
) -> Iterator[os.stat_result]:
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield info
            if stat.S_ISDIR(info.st_mode) and (
                descend is None or descend(WalkEntry(fd, prefix, entry.name, info))
            ):
                subdirs.append((entry.name, info))
