"""Reaching upstream MCP servers: one ``Upstream`` per registered server, under one pool.

``use()`` (an SDK client) and ``use_wire()`` (the express lane's raw POST) are the only
ways in: each admits the call through the upstream's circuit breaker,
bounds it with the call timeout, and sorts what can go wrong into two kinds:

- the upstream answered with a protocol error (``MCPError``): it is alive; the error goes
  back to the client unchanged;
- it could not be reached, dropped the connection, or timed out: the breaker counts a
  failure and the caller gets ``UpstreamUnavailable`` with a readable reason.

HTTP upstreams are sessionless from the gateway's side: each use opens a client on a
connection pool shared by the upstream (a tunnel hub may supply the transport through
``transport_for``), and a 2026-07-28 server's discovery result is reused so a call is one
POST. Credentials arrive as headers for that one use (the last hop) and are never stored
here. Stdio upstreams are one supervised process and one long-lived client.

A third kind of failure is neither: an answer over the message limit, or an upstream's
HTTP 413 (see ``sizing``). The upstream is alive, so the breaker counts a success and the
caller gets ``MessageTooLarge``, even when the SDK went on to produce a result: a use
that saw an oversize message never returns what it got.

A use that is cancelled (the client cancelled, or the call timed out) tells the upstream:
its per-call session gets a ``notifications/cancelled`` for the request and a DELETE (so
no upstream server instance is left behind); a 2026-07-28 upstream sees its POST stream
closed. This is done by hand, shielded and bounded, because cancellation has already
stopped the SDK's own transport tasks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, TypeVar

import anyio
import anyio.abc
import httpx2
import mcp.types as mcp_types
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway.mcp_gateway.breaker import CircuitBreaker, CircuitOpen
from gateway.mcp_gateway.errors import UpstreamTimeout, UpstreamUnavailable, describe, leaf
from gateway.mcp_gateway.settings import McpGatewaySettings
from gateway.mcp_gateway.sizing import ABANDON_TIMEOUT, LimitedTransport, PerRequestLimit, SizeWatch, abandon
from gateway.mcp_gateway.stdio_supervisor import StdioCommand, StdioSupervisor
from gateway.mcp_gateway.upstream_sessions import IDLE_SECONDS, UpstreamSession, UpstreamSessions
from gateway.mcp_gateway.watcher import HttpWatcher, MessageHandler, is_modern
from gateway.mcp_gateway.wire import Wire, close_session
from gateway.store.base import Body

log = logging.getLogger("tether.mcp_gateway")

T = TypeVar("T")
C = TypeVar("C")
TransportFor = Callable[[str], httpx2.AsyncBaseTransport | None]
"""Given an upstream URL, the transport to reach it (e.g. through a tunnel), or None for direct."""
Headers = Callable[[], Awaitable[dict[str, str]]]
OnChange = Callable[[str, frozenset[str]], Awaitable[None]]
UNREACHABLE_CODES = frozenset({mcp_types.CONNECTION_CLOSED, mcp_types.REQUEST_TIMEOUT})
PROTOCOL_MISMATCH_CODES = frozenset({mcp_types.UNSUPPORTED_PROTOCOL_VERSION, mcp_types.HEADER_MISMATCH})
"""Answers that mean the server is no longer what was discovered: rediscover next time."""
STOP_TIMEOUT = 15.0


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


class _Unclosable(httpx2.AsyncBaseTransport):
    """Lets many short-lived HTTP clients share one connection pool without closing it."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        return None


class HttpUpstream:
    def __init__(
        self,
        body: Body,
        breaker: CircuitBreaker,
        transport_for: TransportFor | None,
        watch_headers: Headers,
        on_change: Callable[[frozenset[str]], Awaitable[None]],
    ) -> None:
        self.name: str = body["name"]
        self.body = body
        self.url: str = body["transport"]["url"]
        self.breaker = breaker
        supplied = transport_for(self.url) if transport_for is not None else None
        self._owned = supplied is None
        self._transport = supplied or httpx2.AsyncHTTPTransport()
        self._watch_headers = watch_headers
        self._modern: tuple[str, mcp_types.DiscoverResult] | None = None
        self._handshake: str | None = None
        """The version a session-based upstream negotiated, once a use has seen it."""
        self.sessions = UpstreamSessions()
        self._wire_client: httpx2.AsyncClient | None = None
        self.watcher = HttpWatcher(self.name, self._watch_session, on_change, breaker.record_success)

    def _http(
        self, headers: dict[str, str], read_timeout: float, watch: SizeWatch | None = None
    ) -> httpx2.AsyncClient:
        shared: httpx2.AsyncBaseTransport = _Unclosable(self._transport)
        return httpx2.AsyncClient(
            headers=headers,
            timeout=httpx2.Timeout(read_timeout, connect=10.0),
            transport=LimitedTransport(shared, watch) if watch is not None else shared,
        )

    @asynccontextmanager
    async def session(
        self, headers: dict[str, str], timeout: float, watch: SizeWatch
    ) -> AsyncIterator[Client]:
        async with self._http(headers, timeout + 5.0, watch) as http:
            # The body limit is LimitedTransport's; the SDK's 1 MiB per SSE event is lifted.
            transport = streamable_http_client(self.url, http_client=http, max_sse_event_size=None)
            known = self._modern
            client = (
                Client(transport, mode=known[0], prior_discover=known[1], cache=None)
                if known is not None
                else Client(transport, cache=None)
            )
            async with client:
                if known is None and is_modern(client) and client.session.discover_result is not None:
                    self._modern = (client.protocol_version, client.session.discover_result)
                elif known is None and client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
                    self._handshake = client.protocol_version
                try:
                    yield client
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True), anyio.move_on_after(ABANDON_TIMEOUT):
                        await abandon(http, self.url, watch)
                    raise

    @property
    def wire_version(self) -> str | None:
        """The version the upstream was discovered to speak, of either era; None until known."""
        return self._modern[0] if self._modern is not None else self._handshake

    @asynccontextmanager
    async def wire(self, headers: dict[str, str], timeout: float, watch: SizeWatch) -> AsyncIterator[Wire]:
        """A use of the upstream without the SDK's client (the express lane).

        Cancelling it closes the POST's stream, which is how 2026-07-28 cancels a request;
        a session-based upstream is also sent ``notifications/cancelled`` (``wire``).
        """
        version = self.wire_version
        if version is None:
            raise UpstreamUnavailable("its protocol era is not known yet")
        if self._wire_client is None:
            # One client for every use (building one costs an SSL context); each request
            # brings its use's size watch.
            transport = PerRequestLimit(_Unclosable(self._transport))
            self._wire_client = httpx2.AsyncClient(transport=transport, timeout=None)
        sessions = None if self._modern is not None else self.sessions
        yield Wire(self._wire_client, self.url, version, headers, timeout + 5.0, watch, sessions)

    @asynccontextmanager
    async def _watch_session(self, handler: MessageHandler) -> AsyncIterator[Client]:
        # Listen streams carry a keepalive every 15 s, so a 60 s read timeout spots a dead link.
        async with self._http(await self._watch_headers(), 60.0) as http:
            transport = streamable_http_client(self.url, http_client=http)
            async with Client(transport, cache=None, message_handler=handler) as client:
                yield client

    def failed(self) -> None:
        """After a failure the server may have been replaced: discover its protocol again,
        and open new sessions (the idle ones are queued for closing)."""
        self._modern = None
        self._handshake = None
        self.sessions.drain()

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._close_sessions)
            await self.watcher.run()

    async def _close_sessions(self) -> None:
        """Ends the sessions the books queue for closing: expired, surplus, dropped."""
        while True:
            await self.sessions.wait_for_closing(IDLE_SECONDS / 4)
            self.sessions.expire()
            closing = self.sessions.to_close()
            if closing and self._wire_client is not None:
                await _close_all(self._wire_client, self.url, closing)

    async def aclose(self) -> None:
        if self._wire_client is not None:
            with anyio.move_on_after(STOP_TIMEOUT / 3):
                await _close_all(self._wire_client, self.url, self.sessions.close_all())
            await self._wire_client.aclose()
        if self._owned:
            await self._transport.aclose()

    def snapshot(self) -> dict[str, Any]:
        return {"watch": self.watcher.snapshot()}


async def _close_all(http: httpx2.AsyncClient, url: str, sessions: list[UpstreamSession]) -> None:
    """DELETE the sessions side by side, each bounded."""
    async with anyio.create_task_group() as tasks:
        for session in sessions:
            tasks.start_soon(close_session, http, url, session)


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
        self, name: str, headers: dict[str, str], op: Callable[[Wire], Awaitable[T]], timeout: float
    ) -> T:
        """Like ``use``, but ``op`` speaks the wire itself (``Wire``); HTTP upstreams only."""
        upstream = self._upstream(name)
        if not isinstance(upstream, HttpUpstream):
            raise UpstreamUnavailable("it is not an HTTP server")
        return await self._guarded(
            upstream, lambda watch: upstream.wire(headers, timeout, watch), op, timeout
        )

    def wire_version(self, name: str) -> str | None:
        """The version an HTTP upstream was discovered to speak (either era), if it was."""
        upstream = self._upstreams.get(name)
        return upstream.wire_version if isinstance(upstream, HttpUpstream) else None

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
                    attempt.failed(f"timed out after {timeout:g}s")
                    upstream.failed()
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
