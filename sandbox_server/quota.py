"""The workspace disk quota: measuring usage, and the checks built on it.

Where the workspace is its own size-limited filesystem (``workspace_fs``: the server runs
as root), the kernel enforces the quota: a write past it fails with ``ENOSPC`` whoever makes
it, usage is read off the filesystem and nothing is walked. ``is_full`` lets the ``bash``
tool say why a command failed.

Elsewhere (an unprivileged server) the quota is *soft*: usage is measured by walking the
workspace (allocated blocks, each inode counted once, symlinks not followed, through
directory descriptors so no depth or permission hides a subtree) and enforced at three points:

* ``write``/``edit`` are refused when they would grow a workspace past the quota;
* while a command runs a watcher re-measures every ``disk_poll_interval`` and the
  command is killed once usage passes the quota, so a fast writer can overshoot
  by what it writes within one interval (plus the time one walk takes);
* each command also runs with ``RLIMIT_FSIZE`` set to the quota, which stops any
  single file from growing past it however fast it is written.

A workspace already over quota is not locked: commands still run (the model needs
``rm`` to recover) but are killed as soon as they make usage grow.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from pathlib import Path

import anyio

from sandbox_server import beneath, workspace_fs
from sandbox_server.limits import KiB, format_size

FULL_BELOW = 64 * KiB
"""Free space under which a filesystem-enforced workspace counts as full."""


def disk_usage(root: str | os.PathLike[str]) -> int:
    """Bytes allocated to everything under ``root`` (hard links counted once); vanishing entries are skipped.

    The walk goes through directory descriptors (``beneath.walk_stats``), so a tree deeper than
    ``PATH_MAX`` is counted like any other and symlinks are never followed. A directory the
    server cannot read would hide its subtree: an unprivileged server (whose uid is the
    sandbox's) grants itself ``u+rx`` on such a directory it owns before entering it
    (``_make_walkable``), so ``chmod 300 dir`` only costs the model its own mode bits.
    A root server reads everything anyway.
    """
    seen: set[tuple[int, int]] = set()
    total = 0
    try:
        top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        _make_walkable_root(root, top)
        for info in beneath.walk_stats(top, _make_walkable):
            if info.st_nlink > 1 and not stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += info.st_blocks * 512
    except OSError:
        pass  # the root itself could not be listed
    finally:
        os.close(top)
    return total


_WALKABLE = stat.S_IRUSR | stat.S_IXUSR


def _make_walkable(entry: beneath.WalkEntry) -> bool:
    """Before entering a directory: give it ``u+rx`` if we own it and lack either (never as root).

    ``fchmod`` cannot work through the ``O_PATH`` descriptor that is all we could open of an
    unreadable directory, so the mode is changed by name in its parent's descriptor with
    ``follow_symlinks=False``: if the name was swapped for a symlink meanwhile, nothing is
    changed (and the walk then refuses to enter it anyway).
    """
    info = entry.stat
    if info.st_mode & _WALKABLE != _WALKABLE and info.st_uid == os.geteuid() != 0:
        with contextlib.suppress(OSError, ValueError, NotImplementedError):
            mode = stat.S_IMODE(info.st_mode) | _WALKABLE
            os.chmod(entry.name, mode, dir_fd=entry.dir_fd, follow_symlinks=False)
    return True


def _make_walkable_root(root: str | os.PathLike[str], top: int) -> None:
    """``_make_walkable`` for the workspace root itself (the model may ``chmod 300 /workspace``);
    the root is the server's own path, so it is changed by path."""
    info = os.fstat(top)
    if info.st_mode & _WALKABLE != _WALKABLE and info.st_uid == os.geteuid() != 0:
        with contextlib.suppress(OSError):
            os.chmod(root, stat.S_IMODE(info.st_mode) | _WALKABLE)


class QuotaExceeded(Exception):
    """The message is written for the model."""


class DiskQuota:
    """The quota of one workspace and the checks that share it."""

    def __init__(self, root: str | os.PathLike[str], limit: int, poll_interval: float = 0.1) -> None:
        self.root = os.fspath(root)
        self.limit = limit
        self.poll_interval = poll_interval
        self.enforced = workspace_fs.capacity(Path(self.root)) is not None
        """True when the workspace is its own size-limited filesystem (``workspace_fs``): the
        kernel enforces the quota, usage is read off the filesystem, nothing is walked."""

    def usage(self) -> int:
        if self.enforced:
            measured = workspace_fs.capacity(Path(self.root))
            if measured is not None:
                return measured[0]
        return disk_usage(self.root)

    def is_full(self) -> bool:
        """Whether a filesystem-enforced workspace has no room left (writes fail with ``ENOSPC``)."""
        measured = workspace_fs.capacity(Path(self.root)) if self.enforced else None
        return measured is not None and measured[1] < FULL_BELOW

    def describe(self) -> str:
        return f"the workspace disk quota of {format_size(self.limit)}"

    def ensure_room(self, growth: int) -> None:
        """Refuse (``QuotaExceeded``) a file change that adds ``growth`` bytes to a workspace it would put over quota.

        Shrinking changes always pass, so a model can make room with ``write`` too.
        """
        if growth <= 0:
            return
        measured = workspace_fs.capacity(Path(self.root)) if self.enforced else None
        used = measured[0] if measured is not None else self.usage()
        room = measured[1] if measured is not None else self.limit - used
        if growth > room:
            raise QuotaExceeded(
                f"Refused: this would take the workspace to about {format_size(used + growth)}, "
                f"over {self.describe()} (now {format_size(used)} used). Delete files to make room."
            )

    async def watch(self, baseline: int) -> int:
        """Return the usage once it passes ``max(limit, baseline)``; otherwise run until cancelled.

        ``baseline`` is the usage when the command started: a workspace already
        over quota may shrink but not grow. Each walk runs in a worker thread; the
        pause after it is at least as long as the walk, so a huge workspace costs
        at most about half a core while a command runs.
        """
        if self.enforced:
            await anyio.sleep_forever()  # the filesystem refuses the growth itself
        allowed = max(self.limit, baseline)
        while True:
            started = time.monotonic()
            used = await anyio.to_thread.run_sync(self.usage)
            if used > allowed:
                return used
            await anyio.sleep(max(self.poll_interval, time.monotonic() - started))
