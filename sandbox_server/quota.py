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

import os
import stat
import time
from pathlib import Path

import anyio

from sandbox_server import workspace_fs
from sandbox_server.limits import KiB, format_size

FULL_BELOW = 64 * KiB
"""Free space under which a filesystem-enforced workspace counts as full."""


def disk_usage(root: str | os.PathLike[str]) -> int:
    """Bytes allocated to everything under ``root`` (hard links counted once); vanishing entries are skipped."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [os.fspath(root)]
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if info.st_nlink > 1:
                    key = (info.st_dev, info.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                total += info.st_blocks * 512
                if stat.S_ISDIR(info.st_mode):
                    stack.append(entry.path)
    return total


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
