"""Supervise one running command: stream its output, enforce the time, output and disk limits.

Backends differ in how a command is started and killed (a ``bwrap`` process, a
Docker exec); what happens while it runs is the same for all of them, so it
lives here, against the small ``RunningCommand`` protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.abc

from sandbox_server.output import CappedOutput

DRAIN_TIMEOUT = 2.0
"""After a kill, how long to keep reading output that was already produced."""
REAP_TIMEOUT = 10.0
"""After a kill, how long to wait for the process to be reaped before giving up on it."""


@dataclass(frozen=True)
class Finished:
    """What a backend learns once a command is over and cleaned up."""

    cwd: str | None
    """The shell's final working directory; ``None`` if it did not report one (it ran ``exit``)."""
    memory_exceeded: bool = False
    pids_exceeded: bool = False


class RunningCommand(Protocol):
    """A started command as the supervisor sees it; stdout and stderr arrive merged through ``read``."""

    async def read(self) -> bytes:
        """The next chunk of output; ``b""`` at end of output."""
        ...

    async def wait(self) -> int:
        """The exit status (negative for a signal, as in ``subprocess``)."""
        ...

    async def kill(self) -> None:
        """Kill the command and every process it started; safe to call more than once."""
        ...

    async def finish(self) -> Finished:
        """Release everything the command held (after it ended) and report on it; called once."""
        ...


class Stop(enum.Enum):
    """Why the supervisor killed a command."""

    TIMEOUT = "timeout"
    OUTPUT_CEILING = "output ceiling"
    DISK_QUOTA = "disk quota"


@dataclass(frozen=True)
class Supervised:
    output: CappedOutput
    exit_code: int | None
    stop: Stop | None
    finished: Finished
    disk_usage: int | None
    """The workspace usage that made the disk watcher stop the command."""


async def supervise(
    command: RunningCommand,
    *,
    timeout: float,
    output_limit: int,
    output_ceiling: int,
    disk_watch: Callable[[], Awaitable[int]] | None = None,
) -> Supervised:
    """Run ``command`` to completion or to the first limit it hits, then clean it up.

    Cleanup (kill, reap, ``finish``) is shielded from cancellation, so a cancelled
    tool call still leaves no process or cgroup behind.
    """
    output = CappedOutput(output_limit)
    stop: Stop | None = None
    exit_code: int | None = None
    disk_usage: int | None = None

    async def pump(group: anyio.abc.TaskGroup) -> None:
        nonlocal stop, exit_code
        while chunk := await command.read():
            output.add(chunk)
            if output.total > output_ceiling:
                stop = Stop.OUTPUT_CEILING
                group.cancel_scope.cancel()
                return
        exit_code = await command.wait()
        group.cancel_scope.cancel()

    async def watch(group: anyio.abc.TaskGroup, disk: Callable[[], Awaitable[int]]) -> None:
        nonlocal stop, disk_usage
        disk_usage = await disk()
        stop = stop or Stop.DISK_QUOTA
        group.cancel_scope.cancel()

    try:
        with anyio.move_on_after(timeout) as deadline:
            async with anyio.create_task_group() as group:
                group.start_soon(pump, group)
                if disk_watch is not None:
                    group.start_soon(watch, group, disk_watch)
        if deadline.cancelled_caught and stop is None and exit_code is None:
            stop = Stop.TIMEOUT
    finally:
        with anyio.CancelScope(shield=True):
            if exit_code is None:
                await command.kill()
                # Read to the end even past the ceiling (discarding): output already in the
                # pipe is the tail of what the command printed, and some runtimes (asyncio)
                # only report the exit once the pipe is drained.
                with anyio.move_on_after(DRAIN_TIMEOUT):
                    while chunk := await command.read():
                        if stop is not Stop.OUTPUT_CEILING:
                            output.add(chunk)
                with anyio.move_on_after(REAP_TIMEOUT):
                    exit_code = await command.wait()
            finished = await command.finish()
    return Supervised(output, exit_code, stop, finished, disk_usage)
