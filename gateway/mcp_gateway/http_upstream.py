"""An HTTP upstream: SDK clients and the express lane's wire on one connection pool, its
list-change watcher, and its pooled sessions' closer.

Each SDK use opens a client on the upstream's shared connection pool (a tunnel hub may
supply the transport through ``transport_for``); a 2026-07-28 server's discovery result is
reused so a call is one POST, and the era a use discovers tells the express lane how to
speak to it (``wire``). A cancelled SDK use tells the upstream by hand (``sizing.abandon``).
Credentials arrive as headers for each use (the last hop) and are never stored here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from gateway.mcp_gateway.breaker import CircuitBreaker
from gateway.mcp_gateway.sizing import ABANDON_TIMEOUT, LimitedTransport, PerRequestLimit, SizeWatch, abandon
from gateway.mcp_gateway.upstream_sessions import IDLE_SECONDS, UpstreamSession, UpstreamSessions
from gateway.mcp_gateway.watcher import HttpWatcher, MessageHandler, is_modern
from gateway.mcp_gateway.wire import Era, Wire, close_session
from gateway.store.base import Body

TransportFor = Callable[[str], httpx2.AsyncBaseTransport | None]
"""Given an upstream URL, the transport to reach it (e.g. through a tunnel), or None for direct."""
Headers = Callable[[], Awaitable[dict[str, str]]]
STOP_TIMEOUT = 15.0


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
    def era(self) -> Era | None:
        """The version the upstream was discovered to speak, of either era; None until known."""
        if self._modern is not None:
            return Era(self._modern[0], session_based=False)
        return Era(self._handshake, session_based=True) if self._handshake is not None else None

    @asynccontextmanager
    async def wire(
        self, headers: dict[str, str], timeout: float, watch: SizeWatch, era: Era
    ) -> AsyncIterator[Wire]:
        """A use of the upstream without the SDK's client (the express lane), in ``era`` (as
        the caller found it: a failure elsewhere meanwhile does not fail this use).

        Cancelling it closes the POST's stream, which is how 2026-07-28 cancels a request;
        a session-based upstream is also sent ``notifications/cancelled`` (``wire``).
        """
        if self._wire_client is None:
            # One client for every use (building one costs an SSL context); each request
            # brings its use's size watch.
            transport = PerRequestLimit(_Unclosable(self._transport))
            self._wire_client = httpx2.AsyncClient(transport=transport, timeout=None)
        sessions = self.sessions if era.session_based else None
        yield Wire(self._wire_client, self.url, era.version, headers, timeout + 5.0, watch, sessions)

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
