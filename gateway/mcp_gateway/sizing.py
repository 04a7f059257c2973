"""How big one MCP message may be, and spotting the one that is bigger.

The SDK's streamable HTTP client refuses any SSE event over 1 MiB
(``DEFAULT_MAX_SSE_EVENT_SIZE`` in ``mcp.client.streamable_http``, enforced by httpx2's
``EventSource``) and reports it as a lost connection, which a breaker would count against
a perfectly healthy server. Tether instead lifts that limit and bounds each message itself
(``TETHER_MCP_MAX_MESSAGE_BYTES``, the same for agent sessions and the gateway endpoint).
``LimitedTransport`` sees every response of a use (POST answers, resumed and listening
GETs alike) and counts its decoded bytes: it asks for ``Accept-Encoding: identity`` and
decodes an answer compressed anyway before counting, so a small gzip body cannot inflate
past the limit. An SSE body is counted per event (the count restarts at each blank line),
any other body as a whole, so a long call's many small progress notifications never add
up to "too large". Passing the limit, or an HTTP 413, is noted on a ``SizeWatch`` so the
caller can turn the SDK's generic error (or a success it must not trust) into a clear
"too large" tool error.

The same watch notes the session id and protocol version the upstream answered with and
the id of the last request sent, which is what it takes to tell the upstream about a
cancelled call and close its session after the SDK's own tasks were cancelled.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from gateway.mcp_gateway.settings import MAX_MESSAGE_ENV

log = logging.getLogger("tether.mcp_gateway")
ABANDON_TIMEOUT = 2.0
WATCH_EXTENSION = "tether.size_watch"
"""A request extension carrying the ``SizeWatch`` of the use it belongs to (``PerRequestLimit``)."""


class MessageTooLarge(Exception):
    """A message over the size limit (or one the upstream refused with 413): the server is alive."""


class _Exceeded(httpx2.SSEError, httpx2.StreamError):
    """Stops reading a body over the limit.

    An ``SSEError`` so the SDK gives up on the request at once instead of resuming the
    stream (which would only fetch the same message again); a ``StreamError`` so a JSON
    body's reader reports it as well.
    """


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


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
"""A blank line, which ends an SSE event. A mixed ending not listed only makes counting stricter."""


class _CountedBody(httpx2.AsyncByteStream):
    """A decoded body whose messages (SSE events, or the whole body) may not pass the limit."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None]],
        watch: SizeWatch,
        per_event: bool,
    ) -> None:
        self.chunks = chunks
        self.close = close
        self.watch = watch
        self.per_event = per_event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size, tail = 0, b""
        async for chunk in self.chunks:
            if self.per_event:
                size = self._count_events(size, tail, chunk)
                tail = (tail + chunk)[-3:]  # keeps a blank line split across chunks findable
            else:
                size += len(chunk)
                self._check(size)
            yield chunk

    def _count_events(self, size: int, tail: bytes, chunk: bytes) -> int:
        """Check each event ending in ``chunk``; return the size of the one still open."""
        data, pos = tail + chunk, len(tail)
        for end in _EVENT_END.finditer(data):
            if end.end() <= len(tail):
                continue  # found with the previous chunk
            self._check(size + max(end.start() - pos, 0))
            size, pos = 0, end.end()
        size += len(data) - pos
        self._check(size)
        return size

    def _check(self, size: int) -> None:
        if size > self.watch.limit:
            self.watch.exceeded = True
            raise _Exceeded(f"a message over {self.watch.limit} bytes")

    async def aclose(self) -> None:
        await self.close()


class LimitedTransport(httpx2.AsyncBaseTransport):
    """Bounds every response's messages, after decoding; notes what ``abandon`` needs (only
    the SDK path's uses are abandoned: ``note`` False spares the express lane the work)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, watch: SizeWatch, note: bool = True) -> None:
        self.inner = inner
        self.watch = watch
        self.note = note

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        # Compressed bodies are what would slip past a count of wire bytes: ask for none.
        request.headers["accept-encoding"] = "identity"
        if request.method == "POST" and self.note:
            self._note_request(request)
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.watch.session_id = response.headers.get("mcp-session-id") or self.watch.session_id
            if response.status_code == 413:
                self.watch.refused = True
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        headers = httpx2.Headers(response.headers)
        chunks: AsyncIterator[bytes] = stream.__aiter__()
        close = stream.aclose
        if headers.get("content-encoding", "identity").strip().lower() != "identity":
            # Encoded anyway: decode here (httpx2's decoders, in bounded pieces) and count that.
            encoded = httpx2.Response(response.status_code, headers=headers, stream=stream, request=request)
            chunks, close = encoded.aiter_bytes(), encoded.aclose
            del headers["content-encoding"]
            headers.pop("content-length", None)
        content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        return httpx2.Response(
            response.status_code,
            headers=headers,
            stream=_CountedBody(chunks, close, self.watch, content_type == "text/event-stream"),
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


class PerRequestLimit(httpx2.AsyncBaseTransport):
    """``LimitedTransport`` for one long-lived client shared by many uses: each request brings
    its use's watch as the ``WATCH_EXTENSION`` extension (a request without one is not limited)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        watch = request.extensions.get(WATCH_EXTENSION)
        if not isinstance(watch, SizeWatch):
            return await self.inner.handle_async_request(request)
        return await LimitedTransport(self.inner, watch, note=False).handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def cancelled(request_id: Any) -> dict[str, Any]:
    """The ``notifications/cancelled`` a session-based upstream gets for a request the caller gave up."""
    params = {"requestId": request_id, "reason": "the caller cancelled"}
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}


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
            await http.post(url, json=cancelled(watch.request_id), headers=headers)
        await http.delete(url, headers=headers)
    except httpx2.HTTPError as exc:
        log.info("could not close the session of a cancelled MCP call to %s: %s", url, type(exc).__name__)
