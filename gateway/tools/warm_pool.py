"""A few sandbox server processes started ahead of need, handed to sessions as they come.

A cold sandbox start is a fresh interpreter importing the MCP server: hundreds of milliseconds
of CPU before the first tool call, more on a busy host. ``WarmPool`` keeps ``size`` processes
running ``python -m sandbox_server --warm`` (``sandbox_server.warm``): imported, bound to
nothing yet (no workspace, socket, proxy or token). ``take`` hands one out (the oldest: the
most likely to be done importing, which it says on stdout), and a replacement is started in
the background. The session's flags and tokens then travel on the process's stdin
(``SandboxPool`` writes the hand-over), and from there on it is the process a cold start would
have been, with the same flags, environment allow-list and isolation.

Warm processes die with the gateway like any sandbox (``PR_SET_PDEATHSIG``, spawned from the
event loop's thread), have a pid file (``warm.<pid>.json``) for ``stop_leftovers``, and are
stopped by ``close``. A warm process that died while waiting is skipped (and reaped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from gateway.settings import SANDBOX_WARM_POOL
from gateway.tools.pidfiles import PidFiles, process_start
from gateway.tools.zygote import Zygote, ZygoteFailed
from sandbox_server import launch
from sandbox_server.warm import ROOM, WARM_LINE

log = logging.getLogger("tether.sandbox")

WARM_LABEL = "warm"
"""The pid file label of a warm process not yet handed to a session."""


@dataclass
class WarmProcess:
    process: anyio.abc.Process
    pid_file: Path | None
    started: str | None
    imported: anyio.Event = field(default_factory=anyio.Event)
    """Set when the process said ``WARM_LINE``: a hand-over is served without waiting for imports."""
    watch: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return self.process.returncode is None and process_start(self.process.pid) == self.started

    async def unwatch(self) -> None:
        """Stop reading its stdout (the starter reads the ready line from here on)."""
        if self.watch is not None:
            self.watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch


class WarmPool:
    """``size`` warm sandbox processes (0: none, every start is cold)."""

    def __init__(self, size: int, pid_files: PidFiles | None = None, zygote: bool = False) -> None:
        self.size = max(0, size)
        self.pid_files = pid_files
        self.template = Zygote(pid_files) if zygote and self.size > 0 else None
        """Where warm processes are forked from (None: each is started on its own)."""
        self._retired: list[Zygote] = []
        """Templates that stopped answering: kept for the sandboxes they forked, until closed."""
        self._ready: list[WarmProcess] = []
        self._filling: set[asyncio.Task[None]] = set()
        self._closed = False
        self._added = anyio.Event()

    @property
    def waiting(self) -> int:
        """Warm processes started and not yet handed out."""
        return len(self._ready)

    def pids(self) -> list[int]:
        """The warm processes waiting for a session, oldest first."""
        return [warm.process.pid for warm in self._ready]

    async def wait_for(self, count: int) -> list[int]:
        """Wait until ``count`` warm processes are waiting with their imports done (for benches
        and tests); the pids of those waiting."""
        while sum(warm.imported.is_set() for warm in self._ready) < count:
            await self._added.wait()
        return self.pids()

    def fill(self) -> None:
        """Start warm processes in the background until ``size`` are running or starting."""
        while not self._closed and len(self._ready) + len(self._filling) < self.size:
            task = asyncio.get_running_loop().create_task(self._spawn())
            self._filling.add(task)
            task.add_done_callback(self._filling.discard)

    async def _spawn(self) -> None:
        # Shielded: once spawned, the child must be known here, whatever is cancelled meanwhile.
        with anyio.CancelScope(shield=True):
            try:
                process = await self._start()
            except OSError as exc:
                log.warning("a warm sandbox could not be started: %s", exc)
                return
        pid_file = self.pid_files.record(WARM_LABEL, process.pid) if self.pid_files is not None else None
        warm = WarmProcess(process, pid_file, process_start(process.pid))
        if self._closed:
            await _stop(warm)
            return
        self._ready.append(warm)
        warm.watch = asyncio.get_running_loop().create_task(self._watch(warm))

    async def _start(self) -> anyio.abc.Process:
        """A new warm process: forked from the template, or started on its own without one
        (or when the template fails, which is said once and not tried again)."""
        template = self.template
        if template is not None:
            try:
                return await template.fork()
            except ZygoteFailed as exc:
                if self.template is template:
                    log.warning("%s; warm sandboxes are started on their own from now on", exc)
                    self._retired.append(template)  # its sandboxes serve on; closed with the pool
                    self.template = None
        return await anyio.open_process(
            launch.warm_command(ROOM), stdin=subprocess.PIPE, stderr=None, env=launch.environment(None)
        )

    async def _watch(self, warm: WarmProcess) -> None:
        assert warm.process.stdout is not None
        with contextlib.suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            said = await warm.process.stdout.receive()  # the only output before a hand-over
            if said.strip() == WARM_LINE.encode():
                warm.imported.set()
                self._added.set()
                self._added = anyio.Event()

    async def take(self) -> WarmProcess | None:
        """A live warm process (the caller owns it from now on, pid file included), or None;
        a replacement starts in the background either way."""
        # Shielded: a process taken off the list is the caller's, whatever is cancelled meanwhile.
        with anyio.CancelScope(shield=True):
            try:
                while self._ready:
                    warm = self._ready.pop(0)
                    await warm.unwatch()
                    if warm.alive():
                        return warm
                    log.warning(
                        "warm sandbox pid %d exited with %s", warm.process.pid, warm.process.returncode
                    )
                    await _stop(warm)
            finally:
                self.fill()
        return None

    async def close(self) -> None:
        """Stop every warm process, those still being spawned included."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            for task in list(self._filling):
                await task
            while self._ready:
                warm = self._ready.pop()
                await warm.unwatch()
                await _stop(warm)

    async def close_template(self) -> None:
        """Stop the templates, once no sandbox forked from them is wanted any more (they die with them)."""
        for template in (*self._retired, *([self.template] if self.template is not None else [])):
            await template.close()


async def _stop(warm: WarmProcess) -> None:
    await launch.stop(warm.process, grace=0)
    if warm.pid_file is not None:
        PidFiles.forget(warm.pid_file)


WARM_POOL_ENV = SANDBOX_WARM_POOL.name
DEFAULT_WARM_POOL = SANDBOX_WARM_POOL.default
"""One warm process per gateway by default: a second session starting at the same moment
starts cold, as every session did before, while idle memory stays low."""


def warm_pool_size(env: Mapping[str, str]) -> int:
    """``TETHER_SANDBOX_WARM_POOL``: warm sandbox processes per gateway (0 disables the pool).
    Read through its declaration, so ``tether config show`` and the gateway agree; a bad value
    is a ``ConfigError`` (a ``ValueError``), which stops the start with its message."""
    return SANDBOX_WARM_POOL.read(env)
