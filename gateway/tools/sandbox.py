"""One sandbox MCP server process per session, started on first use.

A sandbox that died is noticed on the next call and replaced by a fresh one on
the same workspace, so files survive and the model sees at most one tool error.

A session whose sandbox runs elsewhere (a ``self_hosted`` environment: on-prem, behind a
tunnel) is answered by the pool's ``locate`` hook instead, and never gets a local process.

A start takes a warm process when one is ready (``warm_pool``): started ahead of need and
imported, it gets the session's flags and tokens on its stdin and serves from there as a cold
start would, so the first tool call skips the interpreter's start-up.

Every start gets a fresh bearer token (``sandbox_server.auth``), which only the pool holds:
it travels to the child in its environment, which is otherwise a short allow-list
(``sandbox_server.launch``), never the gateway's API keys, model key or master key. The
harness gets it back with the URL (``SandboxEndpoint``).

Starts wait their turn in the host's queue (``start_queue``): at most a few at once, first
come first served, each timed from its admission with a timeout that grows with the host's
load. A call whose patience runs out while queued is told it is still waiting
(``StillQueued``), never that the start failed; a start that did fail is remembered, and the
session's next attempt waits a jittered, growing back-off first and reports why.

No sandbox outlives the gateway: each dies with the process that started it
(``PR_SET_PDEATHSIG``, see ``sandbox_server.launch``), a start cancelled at any point kills
and reaps its child, and each running sandbox has a pid file under ``state_dir`` naming the
process exactly (pid, start time, boot), so a restarted gateway stops any that survived
(``stop_leftovers``) and never a process that merely reuses a recorded pid.
"""

from __future__ import annotations

import asyncio
import logging
import math
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from gateway.tools.pidfiles import STOP_GRACE, PidFiles, process_start
from gateway.tools.start_queue import Backoff, StartQueue
from gateway.tools.warm_pool import WarmPool
from sandbox_server import auth, backends, launch, workspace_fs
from sandbox_server.warm import hand_over_line

log = logging.getLogger("tether.sandbox")

START_TIMEOUT = 30.0
"""Seconds a start may take once admitted, on an unloaded host (``Slot.load`` scales it)."""
DEFAULT_IDLE_SECONDS = 900.0
DEATH_WAIT = 2.0


class SandboxStartFailed(Exception):
    pass


@dataclass(frozen=True)
class SandboxEndpoint:
    """Where the harness's MCP client reaches a session's sandbox, and the headers it must send."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    """The sandbox's bearer token: sent to it on this last hop only, never logged."""


@dataclass
class _Sandbox:
    process: anyio.abc.Process
    endpoint: SandboxEndpoint
    drain: asyncio.Task[None]
    last_used: float
    pid_file: Path | None
    started: str | None
    """The process's start time (``process_start``): with the pid, it names this process only."""

    def alive(self) -> bool:
        """Running, as far as the kernel knows: a killed child is a zombie (or reaped, and its pid
        perhaps reused) before ``returncode`` says so, so ``/proc`` is asked too."""
        return self.process.returncode is None and process_start(self.process.pid) == self.started


@dataclass
class _Failure:
    """The session's failed starts in a row: the last one's reason, and when to try again."""

    reason: str
    count: int
    retry_at: float
    """``anyio.current_time()`` before which no new attempt is made."""


@dataclass(frozen=True)
class Launch:
    """What one session's sandbox is started with, beyond the deployment-wide flags."""

    args: list[str]
    env: dict[str, str]


LaunchPlanner = Callable[[str], Awaitable[Launch]]
Locator = Callable[[str], Awaitable[str | None]]
"""The MCP URL of a session's sandbox that runs elsewhere, or None to start one here. Raises
``SandboxStartFailed`` (shown to the model) when the remote sandbox is not available."""


class SandboxPool:
    """``sandbox_args`` are extra ``tether sandbox`` flags (backend, limits) from the gateway's settings;
    ``plan`` adds per-session ones (egress policy, credentials) at every start; ``locate`` finds
    sandboxes that run elsewhere (self-hosted environments); ``state_dir`` keeps a pid file per
    running sandbox (None: none are kept). ``start_queue`` admits starts (the host's queue; a
    fresh one if None); ``start_timeout`` is a start's budget on an unloaded host; ``backoff``
    spaces a session's attempts after failed starts; ``warm_pool`` processes are kept started
    ahead of need (``warm_pool``; 0: every start is cold) once ``warm_up`` is called, forked from
    one template process when ``zygote`` is set (``gateway.tools.zygote``)."""

    def __init__(
        self,
        workspaces: Path,
        sandbox_args: Sequence[str] = (),
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        plan: LaunchPlanner | None = None,
        locate: Locator | None = None,
        state_dir: Path | None = None,
        start_queue: StartQueue | None = None,
        start_timeout: float = START_TIMEOUT,
        backoff: Backoff | None = None,
        warm_pool: int = 0,
        zygote: bool = False,
    ) -> None:
        self.workspaces = workspaces
        self.plan = plan
        self.locate = locate
        self.sandbox_args = list(sandbox_args)
        self.idle_seconds = idle_seconds
        self.pid_files = PidFiles(state_dir) if state_dir is not None else None
        self._clock = clock
        self._sandboxes: dict[str, _Sandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self.start_queue = start_queue or StartQueue()
        self.start_timeout = start_timeout
        self.backoff = backoff or Backoff()
        self._failures: dict[str, _Failure] = {}
        self.warm = WarmPool(warm_pool, self.pid_files, zygote=zygote)

    def workspace(self, session_id: str) -> Path:
        return self.workspaces / session_id

    async def stop_leftovers(self) -> list[int]:
        """Stop sandboxes a previous gateway on this data directory started and left running;
        the pids stopped. Call once at start, before any sandbox is started."""
        if self.pid_files is None:
            return []
        pid_files = self.pid_files
        return await anyio.to_thread.run_sync(pid_files.stop_leftovers)

    def check_host(self) -> str | None:
        """Say once, at the gateway's start, when its sandboxes' ``bash`` cannot run on this host
        (bubblewrap missing): they still serve the file tools, and ``bash`` answers with what
        to install. Returns the line logged, if any."""
        notice = backends.bash_notice(self.sandbox_args)
        if notice is not None:
            log.warning("%s", notice)
        return notice

    async def endpoint(self, session_id: str, patience: float | None = None) -> SandboxEndpoint:
        """The MCP endpoint of the session's sandbox, starting one if none is alive.

        A start waits for its turn in the host's queue, and after failed ones for the session's
        back-off; ``patience`` bounds that waiting (None: as long as it takes). Raises
        ``StillQueued`` when it runs out in the queue, ``SandboxStartFailed`` when the start
        fails or the back-off outlasts it."""
        if self.locate is not None:
            remote = await self.locate(session_id)
            if remote is not None:
                # Self-hosted: the worker's route adds the sandbox's token on the last hop.
                return SandboxEndpoint(remote)
        async with self._lock(session_id):
            sandbox = self._sandboxes.get(session_id)
            if sandbox is not None and sandbox.alive():
                sandbox.last_used = self._clock()
                return sandbox.endpoint
            if sandbox is not None:
                log.warning(
                    "sandbox for %s exited with %s; starting a new one",
                    session_id,
                    sandbox.process.returncode,
                )
                del self._sandboxes[session_id]
                await self._terminate(sandbox)
            sandbox = await self._start_in_turn(session_id, patience)
            self._sandboxes[session_id] = sandbox
            return sandbox.endpoint

    async def replacement(self, session_id: str, stale: SandboxEndpoint) -> SandboxEndpoint | None:
        """After a call to ``stale`` could not even connect: a fresh sandbox's endpoint if the old
        one has died (waiting briefly for a kill still in progress), else None.

        A sandbox killed a moment before the call may not have exited when the pool checked it;
        the call's connection is refused, and the model should not pay for that race.
        """
        async with self._lock(session_id):
            sandbox = self._sandboxes.get(session_id)
            if sandbox is not None and sandbox.endpoint is stale:
                with anyio.move_on_after(DEATH_WAIT):
                    await sandbox.process.wait()
                if sandbox.process.returncode is None:
                    return None
        return await self.endpoint(session_id)

    def _lock(self, session_id: str) -> anyio.Lock:
        return self._locks.setdefault(session_id, anyio.Lock())

    async def _start_in_turn(self, session_id: str, patience: float | None) -> _Sandbox:
        """``_start`` once the session's back-off is over and the queue admits it; a failure is
        remembered (its reason, and when the next attempt may be made)."""
        deadline = math.inf if patience is None else anyio.current_time() + patience
        failure = self._failures.get(session_id)
        if failure is not None:
            if failure.retry_at > deadline:
                wait = failure.retry_at - anyio.current_time()
                raise SandboxStartFailed(f"{failure.reason}; the next attempt is in {wait:.0f}s")
            await anyio.sleep_until(failure.retry_at)
        remaining = None if patience is None else max(0.0, deadline - anyio.current_time())
        try:
            async with self.start_queue.slot(remaining) as slot:
                sandbox = await self._start(session_id, self.start_timeout * slot.load)
        except SandboxStartFailed as exc:
            count = failure.count + 1 if failure is not None else 1
            retry_at = anyio.current_time() + self.backoff.delay(count)
            self._failures[session_id] = _Failure(str(exc), count, retry_at)
            log.warning("sandbox for %s did not start (%d in a row): %s", session_id, count, exc)
            raise
        self._failures.pop(session_id, None)
        return sandbox

    async def _start(self, session_id: str, timeout: float) -> _Sandbox:
        """Start the session's sandbox and wait ``timeout`` seconds at most for its ready line.
        Cancelled at any point after the spawn, the child is killed and reaped (shielded) before
        the cancellation goes on."""
        workspace = self.workspace(session_id)
        try:
            workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SandboxStartFailed(f"the workspace could not be created: {exc.strerror}") from exc
        args = ["--workspace", str(workspace), "--port", "0", *self.sandbox_args]
        extra: dict[str, str] = {}
        if self.plan is not None:
            planned = await self.plan(session_id)
            args += planned.args
            extra = planned.env
        token = auth.new_token()
        handed = await self._hand_over(session_id, args, {**extra, auth.TOKEN_ENV: token})
        if handed is not None:
            process, pid_file = handed
        else:
            env = launch.environment(token, extra)
            # Shielded: once spawned, the child must be known here, whatever is cancelled meanwhile.
            with anyio.CancelScope(shield=True):
                try:
                    process = await anyio.open_process(
                        launch.command(args), stdin=subprocess.DEVNULL, stderr=None, env=env
                    )
                except OSError as exc:  # fork refused, interpreter gone: the model reads it, the run goes on
                    raise SandboxStartFailed(f"the sandbox process could not be started: {exc}") from exc
            pid_file = self.pid_files.record(session_id, process.pid) if self.pid_files is not None else None
        try:
            url = await launch.ready_url(process, timeout)
        except BaseException:
            await _reap(process, pid_file, grace=0)
            raise
        if url is None:
            code = process.returncode
            await _reap(process, pid_file, grace=0)
            detail = f"exited with status {code}" if code is not None else f"not ready in {timeout:.0f}s"
            raise SandboxStartFailed(f"the sandbox did not start ({detail})")
        log.info("sandbox for %s at %s (pid %s)", session_id, url, process.pid)
        endpoint = SandboxEndpoint(url + "/mcp", auth.bearer_headers(token))
        drain = asyncio.create_task(launch.drain(process))
        return _Sandbox(process, endpoint, drain, self._clock(), pid_file, process_start(process.pid))

    def warm_up(self) -> None:
        """Start the warm processes (``warm_pool``); call once the event loop runs."""
        self.warm.fill()

    async def _hand_over(
        self, session_id: str, args: list[str], env: dict[str, str]
    ) -> tuple[anyio.abc.Process, Path | None] | None:
        """Make a warm process the session's sandbox: its flags and tokens on its stdin, its pid
        file renamed to the session's. None (start cold) if no warm process is ready, or if the
        one taken died before it could read (it is reaped)."""
        if set(env) - launch.PER_START:
            return None  # only the tokens travel in a hand-over; anything else needs a cold start
        warm = await self.warm.take()
        if warm is None:
            return None
        assert warm.process.stdin is not None
        # Shielded: once taken, the process is this start's, whatever is cancelled meanwhile.
        with anyio.CancelScope(shield=True):
            try:
                await warm.process.stdin.send(hand_over_line(args, env))
                await warm.process.stdin.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                log.warning("warm sandbox pid %d did not take its hand-over: %s", warm.process.pid, exc)
                await _reap(warm.process, warm.pid_file, grace=0)
                return None
        pid_file = None
        if self.pid_files is not None:
            pid_file = self.pid_files.record(session_id, warm.process.pid)
            if warm.pid_file is not None:
                PidFiles.forget(warm.pid_file)
        return warm.process, pid_file

    async def stop(self, session_id: str) -> None:
        """Stop the session's sandbox; a start in progress finishes (or fails) first. Its workspace
        is unmounted too (loop devices are the host's), and mounted again by whoever next needs it."""
        async with self._lock(session_id):
            sandbox = self._sandboxes.pop(session_id, None)
            if sandbox is not None:
                await self._terminate(sandbox)
                await anyio.to_thread.run_sync(workspace_fs.detach, self.workspace(session_id))

    async def _terminate(self, sandbox: _Sandbox) -> None:
        await _reap(sandbox.process, sandbox.pid_file, grace=STOP_GRACE)
        sandbox.drain.cancel()

    def running(self) -> list[str]:
        return [sid for sid, sandbox in self._sandboxes.items() if sandbox.process.returncode is None]

    def pid(self, session_id: str) -> int | None:
        sandbox = self._sandboxes.get(session_id)
        return sandbox.process.pid if sandbox is not None else None

    async def reap_idle(self) -> list[str]:
        """Stop sandboxes unused for ``idle_seconds``; their workspaces stay for the next call."""
        cutoff = self._clock() - self.idle_seconds
        idle = [sid for sid, sandbox in self._sandboxes.items() if sandbox.last_used <= cutoff]
        for session_id in idle:
            log.info("stopping idle sandbox for %s", session_id)
            await self.stop(session_id)
        return idle

    async def reap_forever(self, interval: float = 30.0) -> None:
        while True:
            await anyio.sleep(interval)
            await self.reap_idle()

    async def destroy(self, session_id: str) -> None:
        """Stop the sandbox and delete the session's workspace, its filesystem image included (the
        session is gone)."""
        await self.stop(session_id)
        self._locks.pop(session_id, None)
        self._failures.pop(session_id, None)
        await anyio.to_thread.run_sync(workspace_fs.remove, self.workspace(session_id))

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            await self.warm.close()
            for session_id in list(self._sandboxes):
                sandbox = self._sandboxes.pop(session_id)
                await self._terminate(sandbox)
            await self.warm.close_template()  # last: sandboxes forked from it die with it


async def _reap(process: anyio.abc.Process, pid_file: Path | None, grace: float) -> None:
    """Stop the child (``launch.stop``), then forget its pid file."""
    await launch.stop(process, grace)
    if pid_file is not None:
        PidFiles.forget(pid_file)
