"""Forward one HTTP request and its response between a client and an upstream connection.

Used for plain HTTP (absolute-form requests, never rewritten) and for requests
inside an intercepted TLS connection (rewritten: secrets substituted into the
request, scrubbed from the response). Bodies are re-framed by the proxy rather
than copied with their framing, which is what makes rewriting possible:

- a request body that gets substitutions is read whole (up to
  ``MAX_REWRITTEN_BODY``) and sent with a recomputed ``Content-Length``; a larger
  one is streamed unchanged, placeholders included (never the other way round);
- a scrubbed response body is buffered and re-measured when small, and
  streamed as chunks otherwise; an unscrubbed one keeps its length or is
  re-chunked.

Every ``HttpError`` raised before the response head reached the client can
still be answered with an error response; ``Outcome.responded`` says whether it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sandbox_server.egress.credentials import Rewrite
from sandbox_server.egress.http import (
    LAST_CHUNK,
    NO_BODY,
    Framing,
    Headers,
    HttpError,
    RequestHead,
    ResponseHead,
    StreamReplacer,
    encode_chunk,
    iter_body,
    read_response_head,
    request_framing,
    response_framing,
    wants_close,
)

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
            # Scrubbing works on what the proxy can read: ask for an uncompressed response.
            headers.set("Accept-Encoding", "identity")
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
                self._redact_headers(interim)
                await self.client.send(
                    ResponseHead("HTTP/1.1", response.status, response.reason, interim).serialize()
                )

    def _redact_headers(self, headers: Headers) -> None:
        if self.rewrite is not None:
            self.rewrite.redact_headers(headers)

    async def _relay_response(self, response: ResponseHead, client_close: bool, upgrade: bool) -> Outcome:
        headers = response.headers.without_hop_by_hop()
        self._redact_headers(headers)
        if response.status == 101:
            if not upgrade:
                raise HttpError(502, "the upstream server switched protocols unasked")
            headers.add("Connection", "Upgrade")
            headers.add("Upgrade", response.headers.get("upgrade") or "")
            await self._send_head(response, headers)
            return Outcome(client_keep_alive=False, upstream_reusable=False, upgraded=True)
        framing = response_framing(self.request.method, response)
        upstream_reusable = framing.kind != "close" and not wants_close(response.version, response.headers)
        chunked_ok = self.request.version == "HTTP/1.1"
        body = iter_body(self.upstream.reader, framing, 502)
        scrubber = self._scrubber(response, framing)
        if framing.kind == "none":
            # HEAD, 204, 304: any Content-Length describes another message; keep it as sent.
            for value in response.headers.get_all("content-length")[:1]:
                headers.set("Content-Length", value)
            return await self._finish(response, headers, client_close, upstream_reusable)
        if scrubber is not None and framing.kind == "length" and framing.length <= MAX_SCRUBBED_LENGTH:
            data = b"".join([part async for part in body])
            data = scrubber.feed(data) + scrubber.flush()
            headers.set("Content-Length", str(len(data)))
            outcome = await self._finish(response, headers, client_close, upstream_reusable)
            await self.client.send(data)
            return outcome
        if scrubber is None and framing.kind == "length":
            headers.set("Content-Length", str(framing.length))
            outcome = await self._finish(response, headers, client_close, upstream_reusable)
            async for part in body:
                await self.client.send(part)
            return outcome
        if chunked_ok:
            headers.set("Transfer-Encoding", "chunked")
            outcome = await self._finish(response, headers, client_close, upstream_reusable)
            async for part in body:
                await self.client.send(encode_chunk(scrubber.feed(part) if scrubber else part))
            if scrubber is not None:
                await self.client.send(encode_chunk(scrubber.flush()))
            await self.client.send(LAST_CHUNK)
            return outcome
        # An HTTP/1.0 client: the end of the connection delimits the body.
        outcome = await self._finish(response, headers, True, upstream_reusable)
        async for part in body:
            await self.client.send(scrubber.feed(part) if scrubber else part)
        if scrubber is not None:
            await self.client.send(scrubber.flush())
        return outcome

    def _scrubber(self, response: ResponseHead, framing: Framing) -> StreamReplacer | None:
        """A secret scrubber for this body, if the proxy is rewriting and can read it (no content coding)."""
        if self.rewrite is None or framing.kind == "none":
            return None
        if any(coding not in ("identity",) for coding in response.headers.tokens("content-encoding")):
            return None
        return self.rewrite.redactor()

    async def _finish(
        self, response: ResponseHead, headers: Headers, client_close: bool, upstream_reusable: bool
    ) -> Outcome:
        """Send the response head; the body (if any) follows from the caller."""
        if client_close:
            headers.set("Connection", "close")
        await self._send_head(response, headers)
        return Outcome(client_keep_alive=not client_close, upstream_reusable=upstream_reusable)

    async def _send_head(self, response: ResponseHead, headers: Headers) -> None:
        version = "HTTP/1.1" if self.request.version == "HTTP/1.1" else "HTTP/1.0"
        self.responded = True
        await self.client.send(ResponseHead(version, response.status, response.reason, headers).serialize())


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
