"""How big one MCP message may be, and spotting the one that is bigger.

The SDK's streamable HTTP client refuses any SSE event over 1 MiB
(``DEFAULT_MAX_SSE_EVENT_SIZE`` in ``mcp.client.streamable_http``, enforced by httpx2's
``EventSource``) and reports it as a lost connection, which a breaker would count against
a perfectly healthy server. Tether instead lifts that limit and bounds the body of each
request's HTTP response itself (``TETHER_MCP_MAX_MESSAGE_BYTES``, the same for agent
sessions and the gateway endpoint). ``LimitedTransport`` counts the bytes as they arrive
and notes on a ``SizeWatch`` when the limit was passed or the server answered 413, so the
caller can turn the SDK's generic error into a clear "too large" tool error.

The same watch notes the session id and protocol version the upstream answered with and
the id of the last request sent, which is what it takes to tell the upstream about a
cancelled call and close its session after the SDK's own tasks were cancelled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2

from gateway.mcp_gateway.settings import MAX_MESSAGE_ENV

log = logging.getLogger("tether.mcp_gateway")
ABANDON_TIMEOUT = 2.0


class MessageTooLarge(Exception):
    """A message over the size limit (or one the upstream refused with 413): the server is alive."""


class _Exceeded(httpx2.StreamError):
    """Stops reading a response body over the limit (a ``StreamError``, which the SDK handles)."""


@dataclass
class SizeWatch:
    """What happened to the sizes of one use's messages."""

    limit: int
    exceeded: bool = False
    refused: bool = False
    session_id: str | None = None
    protocol_version: str | None = None
    request_id: Any = None
    """The JSON-RPC id of the last request POSTed (bodies under 64 KiB only)."""

    def problem(self) -> MessageTooLarge | None:
        if self.exceeded:
            return MessageTooLarge(
                f"the response exceeds the {self.limit}-byte message limit ({MAX_MESSAGE_ENV})"
            )
        if self.refused:
            return MessageTooLarge("the server refused the request as too large (HTTP 413)")
        return None


class _CountedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, watch: SizeWatch) -> None:
        self.inner = inner
        self.watch = watch

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.inner:
            seen += len(chunk)
            if seen > self.watch.limit:
                self.watch.exceeded = True
                raise _Exceeded(f"response body over {self.watch.limit} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class LimitedTransport(httpx2.AsyncBaseTransport):
    """Bounds each POST's response body (a request's answer); GET listen streams are unbounded."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, watch: SizeWatch) -> None:
        self.inner = inner
        self.watch = watch

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST":
            self._note_request(request)
        response = await self.inner.handle_async_request(request)
        if request.method != "POST":
            return response
        self.watch.session_id = response.headers.get("mcp-session-id") or self.watch.session_id
        if response.status_code == 413:
            self.watch.refused = True
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountedBody(stream, self.watch),
            extensions=response.extensions,
            request=request,
        )

    def _note_request(self, request: httpx2.Request) -> None:
        watch = self.watch
        watch.protocol_version = request.headers.get("mcp-protocol-version") or watch.protocol_version
        try:
            body = request.content
        except httpx2.RequestNotRead:  # a streamed body: not the SDK's
            return
        if not body or len(body) > 64 * 1024:
            return
        try:
            message = json.loads(body)
        except ValueError:
            return
        if isinstance(message, dict) and "method" in message and "id" in message:
            watch.request_id = message["id"]

    async def aclose(self) -> None:
        await self.inner.aclose()


async def abandon(http: httpx2.AsyncClient, url: str, watch: SizeWatch) -> None:
    """After a cancelled call: tell a session-based server its request is cancelled, end the session.

    Called shielded by whoever caught the cancellation (the SDK's own transport tasks are
    cancelled by then). A sessionless (2026-07-28) server needs nothing: its POST was aborted.
    """
    if watch.session_id is None:
        return
    headers = {"mcp-session-id": watch.session_id}
    if watch.protocol_version:
        headers["mcp-protocol-version"] = watch.protocol_version
    try:
        if watch.request_id is not None:
            params = {"requestId": watch.request_id, "reason": "the caller cancelled"}
            cancelled = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
            await http.post(url, json=cancelled, headers=headers)
        await http.delete(url, headers=headers)
    except httpx2.HTTPError as exc:
        log.info("could not close the session of a cancelled MCP call to %s: %s", url, type(exc).__name__)
