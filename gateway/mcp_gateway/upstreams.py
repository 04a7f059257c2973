"""Reaching upstream MCP servers: one ``Upstream`` per registered server, under one pool.

``use()`` (an SDK client) and ``use_wire()`` (the express lane's raw POST) are the only
ways in: each admits the call through the upstream's circuit breaker,
bounds it with the call timeout, and sorts what can go wrong into two kinds:

- the upstream answered with a protocol error (``MCPError``): it is alive; the error goes
  back to the client unchanged;
- it could not be reached, dropped the connection, or timed out: the breaker counts a
  failure and the caller gets ``UpstreamUnavailable`` with a readable reason.

HTTP upstreams are ``http_upstream``'s: an SDK client per use on a shared connection
pool, or the express lane's wire (with pooled sessions for a session-based server).
Credentials arrive as headers for that one use (the last hop). Stdio upstreams are one
supervised process and one long-lived client.

A third kind of failure is neither: an answer over the message limit, or an upstream's
HTTP 413 (see ``sizing``). The upstream is alive, so the breaker counts a success and the
caller gets ``MessageTooLarge``, even when the SDK went on to produce a result: a use
that saw an oversize message never returns what it got.

A use that is cancelled (the client cancelled, or the call timed out) tells the upstream:
a session-based server gets ``notifications/cancelled`` for the request (an SDK use's
per-call session also a DELETE, so no server instance is left behind; the express lane
keeps its pooled session); a 2026-07-28 upstream sees its POST stream closed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc
import mcp.types as mcp_types
from mcp import Client, MCPError

from gateway.mcp_gateway.breaker import CircuitBreaker, CircuitOpen
from gateway.mcp_gateway.errors import UNREACHABLE_CODES, UpstreamTimeout, UpstreamUnavailable, describe, leaf
from gateway.mcp_gateway.http_upstream import STOP_TIMEOUT, Headers, HttpUpstream, TransportFor
from gateway.mcp_gateway.settings import McpGatewaySettings
from gateway.mcp_gateway.sizing import SizeWatch
from gateway.mcp_gateway.stdio_supervisor import StdioCommand, StdioSupervisor
from gateway.mcp_gateway.wire import Era, Wire
from gateway.store.base import Body

log = logging.getLogger("tether.mcp_gateway")

T = TypeVar("T")
C = TypeVar("C")
OnChange = Callable[[str, frozenset[str]], Awaitable[None]]
PROTOCOL_MISMATCH_CODES = frozenset({mcp_types.UNSUPPORTED_PROTOCOL_VERSION, mcp_types.HEADER_MISMATCH})
"""Answers that mean the server is no longer what was discovered: rediscover next time."""


class Upstream(Protocol):
    name: str
    body: Body
    breaker: CircuitBreaker

    def session(
        self, headers: dict[str, str], timeout: float, watch: SizeWatch
    ) -> AbstractAsyncContextManager[Client]: ...

    async def run(self) -> None: ...

    async def aclose(self) -> None: ...

    def failed(self) -> None: ...

    def snapshot(self) -> dict[str, Any]: ...


class StdioUpstream:
    def __init__(
        self,
        body: Body,
        breaker: CircuitBreaker,
        env: dict[str, str],
        on_change: Callable[[frozenset[str]], Awaitable[None]],
        max_backoff: float,
    ) -> None:
        self.name: str = body["name"]
        self.body = body
        self.breaker = breaker
        transport = body["transport"]
        command = StdioCommand(transport["command"], list(transport["args"]), env, transport.get("cwd"))
        self.supervisor = StdioSupervisor(
            self.name, command, on_change, on_ready=breaker.record_success, max_backoff=max_backoff
        )

    def session(
        self, headers: dict[str, str], timeout: float, watch: SizeWatch
    ) -> AbstractAsyncContextManager[Client]:
        return self.supervisor.session(timeout)

    def failed(self) -> None:
        return None

    async def run(self) -> None:
        await self.supervisor.run()

    async def aclose(self) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"process": self.supervisor.snapshot()}


class UpstreamPool:
    """Owns every upstream's background task (watcher or supervisor) and routes uses to them."""

    def __init__(
        self,
        settings: McpGatewaySettings,
        on_change: OnChange,
        transport_for: TransportFor | None = None,
    ) -> None:
        self.settings = settings
        self._on_change = on_change
        self._transport_for = transport_for
        self._upstreams: dict[str, Upstream] = {}
        self._running: dict[str, tuple[anyio.CancelScope, anyio.Event]] = {}
        self._tasks: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tasks = None
            with anyio.CancelScope(shield=True):
                for upstream in list(self._upstreams.values()):
                    await upstream.aclose()
                self._upstreams.clear()

    def get(self, name: str) -> Upstream | None:
        return self._upstreams.get(name)

    def names(self) -> list[str]:
        return list(self._upstreams)

    async def put(self, body: Body, env: dict[str, str], watch_headers: Headers) -> None:
        """Start an upstream for ``body``, replacing (and stopping) any previous one of that name."""
        await self.remove(body["name"])
        name = body["name"]

        async def changed(kinds: frozenset[str]) -> None:
            await self._on_change(name, kinds)

        breaker = CircuitBreaker(self.settings.breaker_failures, self.settings.breaker_reset_seconds)
        upstream: Upstream
        if body["transport"]["type"] == "stdio":
            upstream = StdioUpstream(body, breaker, env, changed, self.settings.stdio_restart_max_seconds)
        else:
            upstream = HttpUpstream(body, breaker, self._transport_for, watch_headers, changed)
        self._upstreams[name] = upstream
        scope, done = anyio.CancelScope(), anyio.Event()

        async def run() -> None:
            try:
                with scope:
                    await upstream.run()
            finally:
                done.set()

        if self._tasks is None:
            raise RuntimeError("the upstream pool is not running")
        self._running[name] = (scope, done)
        self._tasks.start_soon(run, name=f"mcp upstream {name}")

    async def remove(self, name: str) -> None:
        """Stop an upstream and wait (bounded) until its process, if any, is reaped."""
        upstream = self._upstreams.pop(name, None)
        running = self._running.pop(name, None)
        if running is not None:
            scope, done = running
            scope.cancel()
            with anyio.move_on_after(STOP_TIMEOUT):
                await done.wait()
        if upstream is not None:
            await upstream.aclose()

    async def use(
        self, name: str, headers: dict[str, str], op: Callable[[Client], Awaitable[T]], timeout: float
    ) -> T:
        """Run ``op`` on an SDK client of the upstream, under its breaker and ``timeout`` (module doc)."""
        upstream = self._upstream(name)
        return await self._guarded(
            upstream, lambda watch: upstream.session(headers, timeout, watch), op, timeout
        )

    async def use_wire(
        self, name: str, headers: dict[str, str], op: Callable[[Wire], Awaitable[T]], timeout: float, era: Era
    ) -> T:
        """Like ``use``, but ``op`` speaks the wire itself (``Wire``), in ``era``; HTTP upstreams only."""
        upstream = self._upstream(name)
        if not isinstance(upstream, HttpUpstream):
            raise UpstreamUnavailable("it is not an HTTP server")
        return await self._guarded(
            upstream, lambda watch: upstream.wire(headers, timeout, watch, era), op, timeout
        )

    def era(self, name: str) -> Era | None:
        """How an HTTP upstream was discovered to speak (either era), if it was."""
        upstream = self._upstreams.get(name)
        return upstream.era if isinstance(upstream, HttpUpstream) else None

    def _upstream(self, name: str) -> Upstream:
        upstream = self._upstreams.get(name)
        if upstream is None:
            raise UpstreamUnavailable("it is not registered (or is still being started)")
        return upstream

    async def _guarded(
        self,
        upstream: Upstream,
        opened: Callable[[SizeWatch], AbstractAsyncContextManager[C]],
        op: Callable[[C], Awaitable[T]],
        timeout: float,
    ) -> T:
        """``op`` on what ``opened`` yields, under the breaker and ``timeout``; failures sorted (module doc)."""
        watch = SizeWatch(self.settings.max_message_bytes)
        try:
            with upstream.breaker.guard() as attempt:
                try:
                    with anyio.fail_after(timeout):
                        async with opened(watch) as client:
                            result = await op(client)
                except TimeoutError:
                    # Counted against the breaker, but no sign the server was replaced: its era
                    # and its pooled sessions stay (the timed-out session was told and kept).
                    attempt.failed(f"timed out after {timeout:g}s")
                    raise UpstreamTimeout(f"timed out after {timeout:g}s") from None
                except UpstreamUnavailable as exc:
                    attempt.failed(str(exc))
                    raise
                except Exception as exc:
                    too_large = watch.problem()
                    if too_large is not None:
                        attempt.succeeded()  # it answered: size is not a reachability failure
                        raise too_large from None
                    cause = leaf(exc)
                    if isinstance(cause, MCPError) and cause.code not in UNREACHABLE_CODES:
                        attempt.succeeded()
                        if cause.code in PROTOCOL_MISMATCH_CODES:
                            upstream.failed()
                        raise cause from None
                    message = describe(exc)
                    attempt.failed(message)
                    upstream.failed()
                    raise UpstreamUnavailable(message) from None
                attempt.succeeded()
                too_large = watch.problem()
                if too_large is not None:  # an oversize message the SDK got past (e.g. on a GET)
                    raise too_large
                return result
        except CircuitOpen as exc:
            last = f"; last error: {exc.last_error}" if exc.last_error else ""
            raise UpstreamUnavailable(f"{exc}{last}") from None

    def health(self, name: str) -> dict[str, Any] | None:
        upstream = self._upstreams.get(name)
        if upstream is None:
            return None
        return {"breaker": upstream.breaker.snapshot(), **upstream.snapshot()}
