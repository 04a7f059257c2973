"""Stdio MCP servers: launched, watched, restarted with backoff, and always reaped.

Each registered stdio server runs as one child process in its own session (process
group), so stopping it kills whatever it spawned too. The gateway talks to it over one
long-lived MCP client (stdio is a single connection; requests are multiplexed by id).

- Crash: the client's pending requests fail at once (``Connection closed``), callers get
  a readable tool error, and the process is started again after a full-jitter backoff
  (0.2 s doubling up to ``max_backoff``; a run that stayed up 30 s resets it).
- Hang at start: a process that has not completed the MCP handshake within
  ``start_timeout`` is killed and retried like a crash.
- Stop (registry delete or update, gateway shutdown): stdin is closed (the MCP spec's
  polite request), then SIGTERM and SIGKILL go to the whole process group, each after a
  bounded wait, shielded from cancellation so no child outlives the supervisor.

A gateway killed with SIGKILL cannot run any of this; its children then see EOF on stdin,
which makes a conforming MCP server exit.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import anyio.abc
import mcp.types as mcp_types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import Client
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage

from gateway.mcp_gateway.backoff import Backoff
from gateway.mcp_gateway.errors import UpstreamUnavailable, describe
from gateway.mcp_gateway.watcher import ALL_LISTS, OnChange, follow, is_modern, legacy_handler

log = logging.getLogger("tether.mcp_gateway")

MAX_LINE_BYTES = 32 * 1024 * 1024
STDERR_TAIL = 20
GRACE_SECONDS = 2.0

State = Literal["starting", "running", "backoff", "stopped"]


@dataclass(frozen=True)
class StdioCommand:
    command: str
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


class _Streams:
    """A ``mcp.client.Transport`` over streams that already exist (the supervisor owns the process)."""

    def __init__(
        self,
        read: MemoryObjectReceiveStream[SessionMessage | Exception],
        write: MemoryObjectSendStream[SessionMessage],
    ) -> None:
        self.read, self.write = read, write

    async def __aenter__(self) -> tuple[Any, Any]:
        return self.read, self.write

    async def __aexit__(self, *exc: object) -> None:
        return None


class StdioSupervisor:
    def __init__(
        self,
        name: str,
        command: StdioCommand,
        on_change: OnChange,
        on_ready: Callable[[], None] = lambda: None,
        max_backoff: float = 30.0,
        start_timeout: float = 30.0,
    ) -> None:
        self.name = name
        self.command = command
        self._on_change = on_change
        self._on_ready = on_ready
        self.max_backoff = max_backoff
        self.start_timeout = start_timeout
        self.state: State = "starting"
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.last_error: str | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
        self._client: Client | None = None
        self._changed = anyio.Event()
        self._retry_at: float | None = None

    # Lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the server running until cancelled (the pool's cancel scope is the stop switch)."""
        backoff = Backoff(initial=0.2, maximum=self.max_backoff, stable_after=30.0)
        incarnation = 0
        try:
            while True:
                self._set_state("starting")
                try:
                    await self._incarnation(backoff, first=incarnation == 0)
                except Exception as exc:
                    self.last_error = describe(exc)
                    log.warning("stdio server %s failed: %s", self.name, self.last_error)
                incarnation += 1
                self.restarts = incarnation
                delay = backoff.next_delay()
                self._retry_at = anyio.current_time() + delay
                self._set_state("backoff")
                await anyio.sleep(delay)
        finally:
            self._set_state("stopped")

    def _set_state(self, state: State) -> None:
        self.state = state
        self._changed.set()
        self._changed = anyio.Event()

    async def _incarnation(self, backoff: Backoff, first: bool) -> None:
        env = {**get_default_environment(), **self.command.env}
        process = await anyio.open_process(
            [self.command.command, *self.command.args],
            env=env,
            cwd=self.command.cwd,
            start_new_session=True,
        )
        self.pid = process.pid
        log.info("stdio server %s started (pid %d)", self.name, process.pid)
        exited = anyio.Event()
        read_send, read_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_send, write_receive = anyio.create_memory_object_stream[SessionMessage](0)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._pump_stdout, process, read_send, exited)
                tasks.start_soon(self._pump_stdin, process, write_receive, read_send)
                tasks.start_soon(self._pump_stderr, process)
                tasks.start_soon(self._wait_exit, process, exited)
                tasks.start_soon(self._kill_if_not_ready, process)
                async with Client(
                    _Streams(read_receive, write_send),
                    mode="auto",
                    message_handler=legacy_handler(self._on_change),
                    cache=None,
                ) as client:
                    self._client = client
                    self.last_error = None
                    backoff.started()
                    self._set_state("running")
                    self._on_ready()
                    if not first:
                        await self._on_change(ALL_LISTS)
                    async with anyio.create_task_group() as following:
                        if is_modern(client):
                            following.start_soon(follow, client, self._on_change)
                        await exited.wait()
                        following.cancel_scope.cancel()
                tasks.cancel_scope.cancel()
        finally:
            self._client = None
            with anyio.CancelScope(shield=True):
                await self._reap(process)
            self.last_exit = process.returncode
            log.info("stdio server %s (pid %s) exited with %s", self.name, process.pid, process.returncode)

    async def _kill_if_not_ready(self, process: anyio.abc.Process) -> None:
        await anyio.sleep(self.start_timeout)
        if self._client is None:
            self.last_error = f"no MCP handshake within {self.start_timeout:.0f}s"
            _signal_group(process.pid, signal.SIGKILL)

    # Pipes ---------------------------------------------------------------------------

    async def _pump_stdout(
        self,
        process: anyio.abc.Process,
        sink: MemoryObjectSendStream[SessionMessage | Exception],
        exited: anyio.Event,
    ) -> None:
        assert process.stdout is not None
        buffer = b""
        try:
            async with sink:
                async for chunk in process.stdout:
                    buffer += chunk
                    if len(buffer) > MAX_LINE_BYTES and b"\n" not in buffer:
                        raise ValueError(f"a stdout line exceeded {MAX_LINE_BYTES} bytes")
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            await sink.send(_parse(line))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass
        except ValueError as exc:
            self.last_error = str(exc)
            _signal_group(process.pid, signal.SIGKILL)
        finally:
            exited.set()

    async def _pump_stdin(
        self,
        process: anyio.abc.Process,
        source: MemoryObjectReceiveStream[SessionMessage],
        reader: MemoryObjectSendStream[SessionMessage | Exception],
    ) -> None:
        assert process.stdin is not None
        try:
            async with source:
                async for message in source:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send((data + "\n").encode())
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            # The process is gone or going: end the read side so no request waits forever.
            await reader.aclose()

    async def _pump_stderr(self, process: anyio.abc.Process) -> None:
        assert process.stderr is not None
        buffer = b""
        try:
            async for chunk in process.stderr:
                *lines, buffer = (buffer + chunk).split(b"\n")
                buffer = buffer[-4096:]
                for line in lines:
                    text = line.decode(errors="replace").rstrip()[:500]
                    self.stderr_tail.append(text)
                    log.debug("[%s stderr] %s", self.name, text)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            pass

    @staticmethod
    async def _wait_exit(process: anyio.abc.Process, exited: anyio.Event) -> None:
        await process.wait()
        exited.set()

    @staticmethod
    async def _reap(process: anyio.abc.Process) -> None:
        """Close stdin, then SIGTERM and SIGKILL the whole group, each after a bounded wait."""
        if process.returncode is None:
            if process.stdin is not None:
                try:
                    await process.stdin.aclose()
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
            if not await _exited_within(process, GRACE_SECONDS):
                _signal_group(process.pid, signal.SIGTERM)
                await _exited_within(process, GRACE_SECONDS)
        # Always: descendants may outlive the leader; the group dies with it.
        _signal_group(process.pid, signal.SIGKILL)
        with anyio.move_on_after(GRACE_SECONDS):
            await process.wait()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                try:
                    await pipe.aclose()
                except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass

    # Use -----------------------------------------------------------------------------

    @asynccontextmanager
    async def session(self, timeout: float) -> AsyncIterator[Client]:
        """The live client; waits (up to ``timeout``) while a start is in progress."""
        deadline = anyio.current_time() + timeout
        while True:
            client = self._client
            if self.state == "running" and client is not None:
                yield client
                return
            if self.state == "backoff":
                wait = max((self._retry_at or 0) - anyio.current_time(), 0.0)
                raise UpstreamUnavailable(
                    f"the stdio server is restarting (next start in {wait:.1f}s; "
                    f"last exit code {self.last_exit}{'; ' + self.last_error if self.last_error else ''})"
                )
            if self.state == "stopped":
                raise UpstreamUnavailable("the stdio server is stopped")
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise UpstreamUnavailable("the stdio server is still starting")
            changed = self._changed
            with anyio.move_on_after(remaining):
                await changed.wait()

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "pid": self.pid if self.state == "running" else None,
            "restarts": self.restarts,
            "last_exit_code": self.last_exit,
            "last_error": self.last_error,
            "stderr_tail": list(self.stderr_tail)[-5:],
        }


def _parse(line: bytes) -> SessionMessage | Exception:
    try:
        return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError as exc:
        return exc


async def _exited_within(process: anyio.abc.Process, seconds: float) -> bool:
    with anyio.move_on_after(seconds):
        await process.wait()
        return True
    return process.returncode is not None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
