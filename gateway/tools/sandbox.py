"""One sandbox MCP server process per session, started on first use.

A sandbox that died is noticed on the next call and replaced by a fresh one on
the same workspace, so files survive and the model sees at most one tool error.

A session whose sandbox runs elsewhere (a ``self_hosted`` environment: on-prem, behind a
tunnel) is answered by the pool's ``locate`` hook instead, and never gets a local process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread

from gateway.serving import READY_PREFIX

log = logging.getLogger("tether.sandbox")

START_TIMEOUT = 30.0
DEFAULT_IDLE_SECONDS = 900.0


class SandboxStartFailed(Exception):
    pass


@dataclass
class _Sandbox:
    process: anyio.abc.Process
    url: str
    drain: asyncio.Task[None]
    last_used: float


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
    sandboxes that run elsewhere (self-hosted environments)."""

    def __init__(
        self,
        workspaces: Path,
        sandbox_args: Sequence[str] = (),
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        plan: LaunchPlanner | None = None,
        locate: Locator | None = None,
    ) -> None:
        self.workspaces = workspaces
        self.plan = plan
        self.locate = locate
        self.sandbox_args = list(sandbox_args)
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sandboxes: dict[str, _Sandbox] = {}
        self._locks: dict[str, anyio.Lock] = {}

    def workspace(self, session_id: str) -> Path:
        return self.workspaces / session_id

    async def url_for(self, session_id: str) -> str:
        """The MCP endpoint of the session's sandbox, starting one if none is alive."""
        if self.locate is not None:
            remote = await self.locate(session_id)
            if remote is not None:
                return remote
        lock = self._locks.setdefault(session_id, anyio.Lock())
        async with lock:
            sandbox = self._sandboxes.get(session_id)
            if sandbox is not None and sandbox.process.returncode is None:
                sandbox.last_used = self._clock()
                return sandbox.url
            if sandbox is not None:
                log.warning(
                    "sandbox for %s exited with %s; starting a new one",
                    session_id,
                    sandbox.process.returncode,
                )
            sandbox = await self._start(session_id)
            self._sandboxes[session_id] = sandbox
            return sandbox.url

    async def _start(self, session_id: str) -> _Sandbox:
        workspace = self.workspace(session_id)
        workspace.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "gateway.cli",
            "sandbox",
            "--workspace",
            str(workspace),
            "--port",
            "0",
            *self.sandbox_args,
        ]
        env = None
        if self.plan is not None:
            launch = await self.plan(session_id)
            command += launch.args
            env = {**os.environ, **launch.env}
        process = await anyio.open_process(command, stdin=None, stderr=None, env=env)
        assert process.stdout is not None
        buffered = b""
        url = None
        with anyio.move_on_after(START_TIMEOUT):
            async for chunk in process.stdout:
                buffered += chunk
                for line in buffered.decode(errors="replace").splitlines():
                    if line.startswith(READY_PREFIX):
                        url = line[len(READY_PREFIX) :].strip() + "/mcp"
                if url:
                    break
        if url is None:
            process.kill()
            await process.aclose()
            raise SandboxStartFailed("the sandbox did not start")
        log.info("sandbox for %s at %s (pid %s)", session_id, url, process.pid)
        return _Sandbox(process, url, asyncio.create_task(_drain(process)), self._clock())

    async def stop(self, session_id: str) -> None:
        sandbox = self._sandboxes.pop(session_id, None)
        self._locks.pop(session_id, None)
        if sandbox is not None:
            await _terminate(sandbox)

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
        """Stop the sandbox and delete the session's workspace (the session is gone)."""
        await self.stop(session_id)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self.workspace(session_id), ignore_errors=True))

    async def close(self) -> None:
        for session_id in list(self._sandboxes):
            await self.stop(session_id)


async def _drain(process: anyio.abc.Process) -> None:
    """Keep reading the child's stdout so a chatty sandbox can never block on a full pipe."""
    assert process.stdout is not None
    try:
        async for _ in process.stdout:
            pass
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


async def _terminate(sandbox: _Sandbox) -> None:
    if sandbox.process.returncode is None:
        sandbox.process.terminate()
        with anyio.move_on_after(5):
            await sandbox.process.wait()
        if sandbox.process.returncode is None:
            sandbox.process.kill()
            await sandbox.process.wait()
    sandbox.drain.cancel()
    await sandbox.process.aclose()
