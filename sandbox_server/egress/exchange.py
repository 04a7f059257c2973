"""Forward one HTTP request and its response between a client and an upstream connection.

Used for plain HTTP (absolute-form requests, never rewritten) and for requests
inside an intercepted TLS connection (rewritten: secrets substituted into the
request, scrubbed from the response). Bodies are re-framed by the proxy rather
than copied with their framing, which is what makes rewriting possible:

- a request body that gets substitutions is read whole (up to
  ``MAX_REWRITTEN_BODY``) and sent with a recomputed ``Content-Length``; a larger
  one is streamed unchanged, placeholders included (never the other way round);
- a response on an intercepted connection is decoded (``codings``: gzip and
  deflate; any other content coding is refused with 502) and scrubbed
  (``scrub``), then buffered and re-measured when its length is known and
  within ``MAX_SCRUBBED_LENGTH``, streamed as chunks otherwise; an unscrubbed
  one keeps its length or is re-chunked;
- on an intercepted connection, protocol upgrades are refused (501: the bytes
  after a 101 would be spliced unread) and ``Range`` is dropped (a secret could
  otherwise be read back a few bytes at a time, each piece too short to match).

Every ``HttpError`` raised before the response head reached the client can
still be answered with an error response; ``Outcome.responded`` says whether it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass

from sandbox_server.egress.codings import CodingError, Decoder, decoder_for
from sandbox_server.egress.credentials import Rewrite
from sandbox_server.egress.http import (
    LAST_CHUNK,
    NO_BODY,
    Framing,
    Headers,
    HttpError,
    RequestHead,
    ResponseHead,
    encode_chunk,
    iter_body,
    read_response_head,
    request_framing,
    response_framing,
    wants_close,
)
from sandbox_server.egress.scrub import StreamScrubber

MAX_REWRITTEN_BODY = 8 * 1024 * 1024
"""Largest request body read whole for substitution."""
MAX_SCRUBBED_LENGTH = 1024 * 1024
"""Largest response body buffered (to keep its ``Content-Length``) while scrubbing secrets."""
RESPONSE_TIMEOUT = 300.0
"""How long an upstream server may take to start its response."""


@dataclass
class Connection:
    """One side of an exchange: a reader and a writer."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, data: bytes) -> None:
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


@dataclass
class Outcome:
    client_keep_alive: bool
    upstream_reusable: bool
    upgraded: bool = False


class Exchange:
    """The state of one request/response pair; ``responded`` once the response head went to the client."""

    def __init__(
        self,
        client: Connection,
        upstream: Connection,
        request: RequestHead,
        *,
        rewrite: Rewrite | None,
        before_send: Callable[[list[str]], None],
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.request = request
        self.rewrite = rewrite
        self.before_send = before_send
        self.responded = False

    async def run(self) -> Outcome:
        request = self.request
        framing = request_framing(request)
        client_close = wants_close(request.version, request.headers)
        upgrade = "upgrade" in request.headers.tokens("connection") and request.headers.get("upgrade")
        if upgrade and self.rewrite is not None:
            # What follows a 101 is spliced, never read: it could carry a secret back unscrubbed.
            raise HttpError(
                501, "protocol upgrades (WebSocket, h2c) are refused where secrets are substituted"
            )
        headers = request.headers.without_hop_by_hop()
        if upgrade:
            headers.add("Connection", "Upgrade")
            headers.add("Upgrade", str(upgrade))
        if "100-continue" in headers.tokens("expect"):
            # Answered here: a body that may need substituting is read before anything goes upstream.
            headers.remove("expect")
            if framing is not NO_BODY:
                await self.client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        used: list[str] = []
        if self.rewrite is not None:
            used += self.rewrite.substitute_headers(headers)
            # Scrubbing works on what the proxy can read: ask for an uncompressed response (gzip
            # or deflate that comes anyway is decoded), and for all of it, never a byte range.
            headers.set("Accept-Encoding", "identity")
            headers.remove("range", "if-range")
        head = RequestHead(request.method, request.target, "HTTP/1.1", headers)
        await self._send_request(head, framing, used)
        response = await self._read_final_response()
        return await self._relay_response(response, client_close, bool(upgrade))

    async def _send_request(self, head: RequestHead, framing: Framing, used: list[str]) -> None:
        headers = head.headers
        body_source = iter_body(self.client.reader, framing, 400)
        if framing.kind == "none":
            self.before_send(sorted(set(used)))
            await self.upstream.send(head.serialize())
            return
        if self.rewrite is not None and self.rewrite.body:
            buffered, complete = await _read_up_to(body_source, MAX_REWRITTEN_BODY)
            if complete:
                body, names = self.rewrite.substitute_body(buffered)
                headers.set("Content-Length", str(len(body)))
                self.before_send(sorted(set(used + names)))
                await self.upstream.send(head.serialize() + body)
                return
            body_source = _prepend(buffered, body_source)
        if framing.kind == "length":
            headers.set("Content-Length", str(framing.length))
            self.before_send(sorted(set(used)))
            await self.upstream.send(head.serialize())
            async for data in body_source:
                await self.upstream.send(data)
        else:
            headers.set("Transfer-Encoding", "chunked")
            self.before_send(sorted(set(used)))
            await self.upstream.send(head.serialize())
            async for data in body_source:
                await self.upstream.send(encode_chunk(data))
            await self.upstream.send(LAST_CHUNK)

    async def _read_final_response(self) -> ResponseHead:
        """The first non-1xx response (or a 101); interim responses go to HTTP/1.1 clients as they come."""
        while True:
            try:
                async with asyncio.timeout(RESPONSE_TIMEOUT):
                    response = await read_response_head(self.upstream.reader)
            except TimeoutError:
                raise HttpError(504, "the upstream server did not respond in time") from None
            if response.status >= 200 or response.status == 101:
                return response
            if self.request.version == "HTTP/1.1" and response.status != 100:
                interim = response.headers.without_hop_by_hop()
                reason = self._redact_head(interim, response.reason)
                await self.client.send(ResponseHead("HTTP/1.1", response.status, reason, interim).serialize())

    def _redact_head(self, headers: Headers, reason: str) -> str:
        """Scrub a response head in place; returns the scrubbed reason phrase."""
        if self.rewrite is None:
            return reason
        self.rewrite.redact_headers(headers)
        return self.rewrite.redact_text(reason)

    async def _relay_response(self, response: ResponseHead, client_close: bool, upgrade: bool) -> Outcome:
        headers = response.headers.without_hop_by_hop()
        reason = self._redact_head(headers, response.reason)
        if response.status == 101:
            if not upgrade or self.rewrite is not None:
                raise HttpError(502, "the upstream server switched protocols unasked")
            headers.add("Connection", "Upgrade")
            headers.add("Upgrade", response.headers.get("upgrade") or "")
            await self._send_head(response.status, reason, headers)
            return Outcome(client_keep_alive=False, upstream_reusable=False, upgraded=True)
        framing = response_framing(self.request.method, response)
        upstream_reusable = framing.kind != "close" and not wants_close(response.version, response.headers)
        head = _Head(response.status, reason, headers, client_close, upstream_reusable)
        if framing.kind == "none":
            # HEAD, 204, 304: any Content-Length describes another message; keep it as sent.
            for value in response.headers.get_all("content-length")[:1]:
                headers.set("Content-Length", value)
            return await self._finish(head)
        body = iter_body(self.upstream.reader, framing, 502)
        if self.rewrite is not None:
            return await self._relay_scrubbed(response, head, framing, body)
        if framing.kind == "length":
            headers.set("Content-Length", str(framing.length))
            outcome = await self._finish(head)
            async for part in body:
                await self.client.send(part)
            return outcome
        return await self._stream(head, body)

    async def _relay_scrubbed(
        self, response: ResponseHead, head: _Head, framing: Framing, body: AsyncIterator[bytes]
    ) -> Outcome:
        """Decode and scrub the body. One sent with a length of at most ``MAX_SCRUBBED_LENGTH`` is read
        whole and re-measured (decoded, it may outgrow that: then it streams); any other streams at once,
        so event streams and long polls keep flowing (``StreamScrubber`` holds back only a little)."""
        assert self.rewrite is not None
        try:
            decoder = decoder_for(response.headers.tokens("content-encoding"))
        except CodingError as exc:
            raise HttpError(502, f"{exc}, so the response could not be scrubbed of secrets") from None
        if decoder is not None:
            head.headers.remove("content-encoding")
        scrubbed = _scrubbed(body, decoder, self.rewrite.redactor())
        if framing.kind != "length" or framing.length > MAX_SCRUBBED_LENGTH:
            return await self._stream(head, scrubbed)
        buffered, complete = await _read_up_to(scrubbed, MAX_SCRUBBED_LENGTH)
        if complete:
            head.headers.set("Content-Length", str(len(buffered)))
            outcome = await self._finish(head)
            await self.client.send(buffered)
            return outcome
        return await self._stream(head, _prepend(buffered, scrubbed))

    async def _stream(self, head: _Head, body: AsyncIterator[bytes]) -> Outcome:
        """Send a body of unknown length: chunked to an HTTP/1.1 client, delimited by closing otherwise."""
        head.headers.remove("content-length")
        if self.request.version == "HTTP/1.1":
            head.headers.set("Transfer-Encoding", "chunked")
            outcome = await self._finish(head)
            async for part in body:
                await self.client.send(encode_chunk(part))
            await self.client.send(LAST_CHUNK)
            return outcome
        head.client_close = True
        outcome = await self._finish(head)
        async for part in body:
            await self.client.send(part)
        return outcome

    async def _finish(self, head: _Head) -> Outcome:
        """Send the response head; the body (if any) follows from the caller."""
        if head.client_close:
            head.headers.set("Connection", "close")
        await self._send_head(head.status, head.reason, head.headers)
        return Outcome(client_keep_alive=not head.client_close, upstream_reusable=head.upstream_reusable)

    async def _send_head(self, status: int, reason: str, headers: Headers) -> None:
        version = "HTTP/1.1" if self.request.version == "HTTP/1.1" else "HTTP/1.0"
        self.responded = True
        await self.client.send(ResponseHead(version, status, reason, headers).serialize())


@dataclass
class _Head:
    """A response head on its way to the client."""

    status: int
    reason: str
    headers: Headers
    client_close: bool
    upstream_reusable: bool


async def _scrubbed(
    body: AsyncIterator[bytes], decoder: Decoder | None, scrubber: StreamScrubber | None
) -> AsyncIterator[bytes]:
    """``body`` decoded and scrubbed; a body that cannot be decoded ends it with ``HttpError(502)``."""

    def scrub(pieces: Iterable[bytes]) -> Iterator[bytes]:
        for piece in pieces:
            out = scrubber.feed(piece) if scrubber is not None else piece
            if out:
                yield out

    try:
        async for data in body:
            for out in scrub(decoder.feed(data) if decoder is not None else (data,)):
                yield out
        for out in scrub(decoder.finish() if decoder is not None else ()):
            yield out
    except CodingError as exc:
        raise HttpError(502, f"{exc}, so the response could not be scrubbed of secrets") from None
    if scrubber is not None and (rest := scrubber.flush()):
        yield rest


async def _read_up_to(source: AsyncIterator[bytes], limit: int) -> tuple[bytes, bool]:
    """Read ``source`` until it ends (``complete``) or more than ``limit`` bytes arrived."""
    parts: list[bytes] = []
    size = 0
    async for data in source:
        parts.append(data)
        size += len(data)
        if size > limit:
            return b"".join(parts), False
    return b"".join(parts), True


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for data in rest:
        yield data
