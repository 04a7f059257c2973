"""An httpx2 transport that carries each request through a new tunnel stream.

Plugged into any ``httpx2.AsyncClient`` (and so into the MCP SDK's streamable HTTP
client), it sends the request head and body down a stream to the agent, which does the
real HTTP on-prem, and streams the response back. Responses stream both ways (MCP's SSE
responses included) under the mux's per-stream credit.

Errors map onto httpx2's exceptions so callers need no tunnel-specific handling: an agent
refusing or failing to reach a target is a ``ConnectError`` (nothing was sent upstream);
a link lost mid-response is a ``ReadError``; httpx2 timeouts are honoured.

A response lost with its agent connection fails at once, and is not resumed into the
hub's connect wait: unless another agent of the tunnel is live to carry a resumption, the
error is ``TunnelLinkLost``, which is also an ``SSEError`` so SSE clients (the MCP SDK's
streamable HTTP client among them) give the call up instead of retrying with
``Last-Event-ID``; and a ``Last-Event-ID`` request for a session whose stream was lost with
its connection (and the DELETE ending that session) never waits for an agent to
reconnect. Only new requests (POSTs) wait.

Each request carries its tunnel's CA certificates as read at the moment the stream opens
(``trust``, from ``gateway.resources.tunnel_certificates``): the agent makes the TLS
connection on-prem and verifies it against them, so an archived certificate is trusted by no
connection made after the archive. The URL's own scheme plays no part: the agent's route
decides whether the last hop is TLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import httpx2
from anyio.streams.buffered import BufferedByteReceiveStream

from gateway.store.base import StoreUnavailable
from gateway.tunnels.errors import TrustWithdrawn, TunnelUnavailable
from tunnel_agent.httpwire import HeadError, RequestHead, encode_request, end_to_end, read_response
from tunnel_agent.mux import MuxStream, StreamReset
from tunnel_agent.protocol import ErrorCode

if TYPE_CHECKING:
    from gateway.tunnels.hub import AgentConnection, TunnelHub

_NOT_SENT = frozenset({ErrorCode.REFUSED, ErrorCode.UNREACHABLE, ErrorCode.OVERLOADED})
_LOST_SESSIONS_KEPT = 256

TrustLookup = Callable[[str], Awaitable[Sequence[str]]]
"""A tunnel id to the PEM CA certificates its TLS last hops must chain to (empty: default trust)."""


class TunnelLinkLost(httpx2.ReadError, httpx2.SSEError):
    """The agent connection carrying this response is gone and no other agent could resume
    it. An ``SSEError`` too, so SSE clients end the call instead of resuming the stream."""


class TunnelTransport(httpx2.AsyncBaseTransport):
    def __init__(self, hub: TunnelHub, trust: TrustLookup | None = None) -> None:
        self._hub = hub
        self._trust = trust
        self._lost_sessions: dict[str, None] = {}
        """MCP session ids (``""``: none) with a response lost with its connection; the
        newest few, in order."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts = request.extensions.get("timeout", {})
        # In a session that lost a stream with its connection, only new messages (POSTs)
        # wait for an agent to reconnect: resuming or listening (GET) and ending the
        # session (DELETE) fail at once unless an agent is live now.
        resuming = request.method != "POST" and _session_of(request) in self._lost_sessions
        try:
            with anyio.fail_after(timeouts.get("connect")):
                if resuming:
                    stream, connection = await self._hub.open_stream(request.url.host, wait=False)
                else:
                    stream, connection = await self._hub.open_stream(request.url.host)
        except TimeoutError:
            raise httpx2.ConnectTimeout("timed out waiting for a tunnel agent", request=request) from None
        except TunnelUnavailable as exc:
            if resuming:
                message = f"tunnel: this session's stream was lost with its agent connection ({exc})"
                raise httpx2.ConnectError(message, request=request) from None
            raise httpx2.ConnectError(str(exc), request=request) from None
        try:
            trust = await self._trust_of(connection, request)
            await self._send_request(stream, request, timeouts.get("write"), trust)
            reader = BufferedByteReceiveStream(stream)
            with anyio.fail_after(timeouts.get("read")):
                head = await read_response(reader)
        except StreamReset as exc:
            raise self._failure(exc, connection, request) from None
        except HeadError as exc:
            stream.reset(ErrorCode.PROTOCOL, str(exc))
            self._hub.record_stream_error(connection, ErrorCode.PROTOCOL, str(exc))
            raise httpx2.RemoteProtocolError(f"tunnel agent sent {exc}", request=request) from None
        except TimeoutError:
            stream.reset(ErrorCode.CANCELLED, "timed out")
            raise httpx2.ReadTimeout("timed out waiting for the response", request=request) from None
        except BaseException:
            stream.reset(ErrorCode.CANCELLED, "request abandoned")
            raise
        body = _ResponseBody(self, reader, stream, connection, request, timeouts.get("read"))
        return httpx2.Response(
            head.status, headers=head.headers, stream=body, extensions={"http_version": b"HTTP/1.1"}
        )

    async def _trust_of(self, connection: AgentConnection, request: httpx2.Request) -> tuple[str, ...]:
        """Fails closed: without the tunnel's certificates nothing is sent."""
        if self._trust is None:
            return ()
        try:
            return tuple(await self._trust(connection.tunnel_id))
        except StoreUnavailable:
            message = "tunnel: its CA certificates cannot be read right now"
            raise httpx2.ConnectError(message, request=request) from None
        except TrustWithdrawn:
            message = (
                "tunnel: all of its CA certificates are archived; it rejects MCP traffic until a "
                "new certificate is added"
            )
            raise httpx2.ConnectError(message, request=request) from None

    async def _send_request(
        self, stream: MuxStream, request: httpx2.Request, timeout: float | None, trust: tuple[str, ...]
    ) -> None:
        headers = end_to_end(request.headers.multi_items())
        has_body = any(name == "content-length" and value != "0" for name, value in headers) or (
            "transfer-encoding" in request.headers
        )
        target = request.url.raw_path.decode("ascii")
        with anyio.fail_after(timeout):
            await stream.send(encode_request(RequestHead(request.method, target, headers, has_body, trust)))
            if has_body:
                async for chunk in _chunks(request):
                    await stream.send(chunk)
            await stream.send_eof()

    def _failure(
        self, exc: StreamReset, connection: AgentConnection, request: httpx2.Request
    ) -> httpx2.TransportError:
        self._hub.record_stream_error(connection, exc.code, exc.message)
        message = f"tunnel: {exc.message}"
        if exc.code is ErrorCode.LINK_LOST:
            self._note_lost(request)
            if not self._hub.resumable_elsewhere(connection):
                return TunnelLinkLost(message, request=request)
        if exc.code in _NOT_SENT:
            return httpx2.ConnectError(message, request=request)
        if exc.code is ErrorCode.PROTOCOL:
            return httpx2.RemoteProtocolError(message, request=request)
        return httpx2.ReadError(message, request=request)

    def _note_lost(self, request: httpx2.Request) -> None:
        session = _session_of(request)
        self._lost_sessions.pop(session, None)
        self._lost_sessions[session] = None
        while len(self._lost_sessions) > _LOST_SESSIONS_KEPT:
            del self._lost_sessions[next(iter(self._lost_sessions))]


def _session_of(request: httpx2.Request) -> str:
    return request.headers.get("mcp-session-id", "")


async def _chunks(request: httpx2.Request) -> AsyncIterator[bytes]:
    stream = request.stream
    assert isinstance(stream, httpx2.AsyncByteStream)
    async for chunk in stream:
        if chunk:
            yield chunk


class _ResponseBody(httpx2.AsyncByteStream):
    def __init__(
        self,
        transport: TunnelTransport,
        reader: BufferedByteReceiveStream,
        stream: MuxStream,
        connection: AgentConnection,
        request: httpx2.Request,
        read_timeout: float | None,
    ) -> None:
        self._transport = transport
        self._reader = reader
        self._stream = stream
        self._connection = connection
        self._request = request
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                with anyio.fail_after(self._read_timeout):
                    chunk = await self._reader.receive()
            except anyio.EndOfStream:
                return
            except StreamReset as exc:
                raise self._transport._failure(exc, self._connection, self._request) from None
            except TimeoutError:
                self._stream.reset(ErrorCode.CANCELLED, "timed out")
                raise httpx2.ReadTimeout("timed out reading the response", request=self._request) from None
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()
