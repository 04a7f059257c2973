"""One JSON-RPC request to an HTTP upstream, spoken on the wire without the SDK's client.

The express lane (``express``) relays ``tools/call`` this way: one POST, answered by one
JSON body or by an SSE stream carrying the request's ``notifications/progress`` and then
its response. The answer is read by the rules of the SDK's streamable HTTP transport
(``mcp.client.streamable_http``), so both lanes see the same thing in every case:

- redirects are followed within the endpoint's origin only (the SDK's own
  ``stream_within_origin``); another is ``INVALID_REQUEST`` naming where it pointed;
- ``202`` for a request is ``INVALID_REQUEST``; any status of 400 or more is the JSON-RPC
  error in its body if it has one, else ``METHOD_NOT_FOUND`` (404) or ``INTERNAL_ERROR``;
- bodies and events are parsed with the SDK's ``jsonrpc_message_adapter`` (a body it
  cannot parse is ``PARSE_ERROR``); only SSE events named ``message`` count, and the
  first response on the stream is the answer;
- an SSE stream that ends (or breaks) before answering is ``CONNECTION_CLOSED``, which,
  like a refused connection, counts against the breaker. So does a JSON body answering
  some other request (the SDK would wait for the timeout).

Everything goes through the upstream's size-limited transport (``sizing``), so the
message limit and the 413 rule apply exactly as on the SDK path.

A session-based (2025-11-25) upstream is spoken to in a session (``session_for``) taken
from its idle ones (``upstream_sessions``) or opened (``initialize``, then
``notifications/initialized``). A cancelled call sends ``notifications/cancelled`` and
keeps the session; a 404 means the upstream forgot the session (``SessionGone``: the call
did not run there); a transport failure drops it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp import MCPError
from mcp.client.streamable_http import DEFAULT_RECONNECTION_DELAY_MS, LAST_EVENT_ID, MAX_RECONNECTION_ATTEMPTS
from mcp.shared._httpx_utils import redirect_location, stream_within_origin
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
)
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    JSONRPCResponse,
)
from mcp_types.jsonrpc import jsonrpc_message_adapter
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError

from gateway.mcp_gateway.errors import UNREACHABLE_CODES
from gateway.mcp_gateway.sizing import ABANDON_TIMEOUT, WATCH_EXTENSION, SizeWatch, cancelled
from gateway.mcp_gateway.upstream_sessions import UpstreamSession, UpstreamSessions, owner_of


@dataclass(frozen=True)
class Era:
    """How an HTTP upstream speaks: its protocol version, and whether that era has sessions."""

    version: str
    session_based: bool


@dataclass(frozen=True)
class Wire:
    """What the express lane needs to speak to an HTTP upstream itself, for one use."""

    http: httpx2.AsyncClient
    """The upstream's long-lived client for the express lane (requests carry ``watch``)."""
    url: str
    protocol_version: str
    """The version it was discovered to speak (2026-07-28, or a session's era)."""
    headers: dict[str, str]
    """The last hop's credential headers."""
    timeout: float
    watch: SizeWatch
    sessions: UpstreamSessions | None
    """Its idle sessions, for a session-based upstream; None for a 2026-07-28 one."""


class SessionGone(Exception):
    """The upstream answered 404 to a request in a session: it no longer knows the session."""


Resume = Callable[[str], AbstractAsyncContextManager[httpx2.Response]]
"""Opens the GET that resumes a request's SSE stream after the given event id."""
SSE = "text/event-stream"
ProgressSink = Callable[[dict[str, Any]], Awaitable[None]]
"""Receives the ``params`` of each ``notifications/progress`` on the request's stream."""
ACCEPT = "application/json, text/event-stream"
SESSION_HEADER = "mcp-session-id"


def request_headers(message: dict[str, Any], protocol_version: str) -> dict[str, str]:
    """The routing headers the 2026-07-28 wire requires (``Mcp-Method``, ``Mcp-Name``)."""
    headers = {
        MCP_PROTOCOL_VERSION_HEADER: protocol_version,
        "accept": ACCEPT,
        "content-type": "application/json",
    }
    headers[MCP_METHOD_HEADER] = message["method"]
    name = (message.get("params") or {}).get("name")
    if isinstance(name, str):
        headers[MCP_NAME_HEADER] = encode_header_value(name)
    return headers


@asynccontextmanager
async def _post(
    wire: Wire, message: dict[str, Any], headers: dict[str, str]
) -> AsyncIterator[httpx2.Response]:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    async with stream_within_origin(
        wire.http,
        "POST",
        wire.url,
        content=body,
        headers={**wire.headers, **headers},
        timeout=httpx2.Timeout(wire.timeout, connect=10.0),
        extensions={WATCH_EXTENSION: wire.watch},
    ) as response:
        yield response


async def exchange(
    wire: Wire,
    message: dict[str, Any],
    headers: dict[str, str],
    on_progress: ProgressSink | None = None,
    session: UpstreamSession | None = None,
) -> dict[str, Any]:
    """POST ``message`` (a request) and return its raw ``result``; an error answer raises ``MCPError``."""
    if session is not None:
        headers = {**headers, **session_headers(session)}
        session.in_flight = message["id"]
    async with _post(wire, message, headers) as response:
        if session is not None and session.session_id is not None and response.status_code == 404:
            if await _session_unknown(response):
                raise SessionGone
        reply = await _answer(response, message["id"], on_progress, _resume(wire, headers))
    if session is not None:
        session.in_flight = None
    if isinstance(reply, JSONRPCError):
        raise MCPError.from_error_data(reply.error)
    return reply.result


def _resume(wire: Wire, headers: dict[str, str]) -> Resume:
    """GETs that resume a request's stream from an event id (``Last-Event-ID``)."""
    kept = {k: v for k, v in headers.items() if k.lower() in (SESSION_HEADER, MCP_PROTOCOL_VERSION_HEADER)}

    def resume(last_id: str) -> AbstractAsyncContextManager[httpx2.Response]:
        return stream_within_origin(
            wire.http,
            "GET",
            wire.url,
            headers={**wire.headers, **kept, "accept": SSE, LAST_EVENT_ID: last_id},
            timeout=httpx2.Timeout(wire.timeout, connect=10.0),
            extensions={WATCH_EXTENSION: wire.watch},
        )

    return resume


async def _session_unknown(response: httpx2.Response) -> bool:
    """Whether a 404 in a session says the session is unknown, not that the request failed.

    A server that forgot the session refuses before reading the request (its error, if it
    sends one, has no id); an error naming the request is the request's own answer.
    """
    if response.headers.get("content-type", "").lower().startswith("application/json"):
        try:
            parsed = jsonrpc_message_adapter.validate_json(await response.aread(), by_name=False)
        except (httpx2.StreamError, ValidationError):
            return True
        return not (isinstance(parsed, JSONRPCError) and parsed.id is not None)
    return True


def session_headers(session: UpstreamSession) -> dict[str, str]:
    headers = {MCP_PROTOCOL_VERSION_HEADER: session.protocol_version, "accept": ACCEPT}
    if session.session_id is not None:
        headers[SESSION_HEADER] = session.session_id
    return headers


@asynccontextmanager
async def session_for(
    wire: Wire, caller_id: str, client_info: dict[str, Any], fresh: bool = False
) -> AsyncIterator[UpstreamSession]:
    """A session of this caller and credential with a session-based upstream, for one call.

    An idle one unless ``fresh``. It goes back to the idle ones when the call ends,
    answered or refused or cancelled (the upstream is told of a cancelled request); one
    the upstream forgot is let go; after any other failure it is closed.
    """
    sessions = wire.sessions
    assert sessions is not None, "a 2026-07-28 upstream has no sessions"
    owner = owner_of(caller_id, wire.headers)
    session = None if fresh else sessions.take(owner)
    if session is None:
        session = await _open(wire, client_info, owner, sessions)
    try:
        yield session
    except anyio.get_cancelled_exc_class():
        with anyio.CancelScope(shield=True), anyio.move_on_after(ABANDON_TIMEOUT):
            if session.in_flight is not None:
                await _cancel(wire, session, session.in_flight)
        session.in_flight = None
        sessions.give_back(session)
        raise
    except SessionGone:
        sessions.forget(session)
        raise
    except MCPError as exc:
        if exc.code in UNREACHABLE_CODES:  # a broken or cut stream: the session may be in any state
            sessions.discard(session)
        else:
            session.in_flight = None
            sessions.give_back(session)
        raise
    except BaseException:
        sessions.discard(session)
        raise
    sessions.give_back(session)


async def _open(
    wire: Wire, client_info: dict[str, Any], owner: tuple[str, str], sessions: UpstreamSessions
) -> UpstreamSession:
    params = {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {}, "clientInfo": client_info}
    message = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params}
    async with _post(wire, message, {"accept": ACCEPT, "content-type": "application/json"}) as response:
        # Booked as soon as the upstream names it, so any failure from here on closes it.
        session = UpstreamSession(
            response.headers.get(SESSION_HEADER), LATEST_HANDSHAKE_VERSION, owner, dict(wire.headers)
        )
        sessions.opened(session)
        try:
            reply = await _answer(response, 0, None)
        except BaseException:
            sessions.discard(session)
            raise
    try:
        if isinstance(reply, JSONRPCError):
            raise MCPError.from_error_data(reply.error)
        version = reply.result.get("protocolVersion")
        if version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise MCPError(
                INTERNAL_ERROR, f"the server negotiated protocol version {version!r}, which is not served"
            )
        session.protocol_version = version
        await _notify(wire, session, {"jsonrpc": "2.0", "method": "notifications/initialized"})
    except BaseException:
        sessions.discard(session)  # half open: closed by the upstream's closer
        raise
    return session


async def _notify(wire: Wire, session: UpstreamSession, message: dict[str, Any]) -> None:
    headers = {**session_headers(session), "content-type": "application/json"}
    async with _post(wire, message, headers) as response:
        await response.aread()
    if response.status_code >= 400:
        raise MCPError(INTERNAL_ERROR, f"Server refused {message['method']} with HTTP {response.status_code}")


async def _cancel(wire: Wire, session: UpstreamSession, request_id: Any) -> None:
    try:
        await _notify(wire, session, cancelled(request_id))
    except (MCPError, httpx2.HTTPError):
        pass  # a courtesy: the session is kept either way


async def close_session(http: httpx2.AsyncClient, url: str, session: UpstreamSession) -> None:
    """End a session the gateway no longer keeps: a best-effort DELETE, bounded."""
    if session.session_id is None:
        return
    with anyio.move_on_after(ABANDON_TIMEOUT):
        try:
            await http.delete(url, headers={**session.headers, **session_headers(session)})
        except Exception:
            pass


async def _answer(
    response: httpx2.Response, request_id: Any, on_progress: ProgressSink | None, resume: Resume | None = None
) -> JSONRPCResponse | JSONRPCError:
    status = response.status_code
    if status == 202:
        raise MCPError(INVALID_REQUEST, "server answered a request with 202 Accepted")
    if (location := redirect_location(response)) is not None:
        where = (
            f"Redirect to {location} not followed; use that URL as the endpoint if it is the intended server"
        )
        raise MCPError(INVALID_REQUEST, where)
    content_type = response.headers.get("content-type", "").lower()
    if status >= 400:
        if content_type.startswith("application/json"):
            try:
                parsed = jsonrpc_message_adapter.validate_json(await response.aread(), by_name=False)
            except (httpx2.StreamError, ValidationError):
                parsed = None
            if isinstance(parsed, JSONRPCError):
                return parsed
        if status == 404:
            raise MCPError(METHOD_NOT_FOUND, "Not Found")
        raise MCPError(INTERNAL_ERROR, "Server returned an error response")
    if content_type.startswith("application/json"):
        try:
            answer = jsonrpc_message_adapter.validate_json(await response.aread(), by_name=False)
        except (httpx2.StreamError, ValidationError) as exc:
            raise MCPError(PARSE_ERROR, f"Failed to parse JSON response: {exc}") from None
        if isinstance(answer, JSONRPCResponse | JSONRPCError) and answer.id == request_id:
            return answer
        raise MCPError(CONNECTION_CLOSED, "the server's JSON answer is not a response to the request")
    if content_type.startswith(SSE):
        return await _from_events(response, request_id, on_progress, resume)
    raise MCPError(INVALID_REQUEST, f"Unexpected content type: {content_type}")


@dataclass
class _Resumable:
    """What the events so far say about resuming the stream (the SDK's reconnection rules)."""

    last_id: str | None = None
    retry_ms: int | None = None


async def _from_events(
    response: httpx2.Response, request_id: Any, on_progress: ProgressSink | None, resume: Resume | None
) -> JSONRPCResponse | JSONRPCError:
    """The answer on an SSE stream; a stream that ends with event ids is resumed over GETs."""
    stream = _Resumable()
    try:
        answer = await _read_events(response, request_id, on_progress, stream)
    except httpx2.SSEError as exc:
        raise MCPError(CONNECTION_CLOSED, f"SSE stream failed: {exc}") from None
    except httpx2.TransportError:
        answer = None  # a broken stream: resumable as one that ended
    attempt = 0
    while answer is None:
        if stream.last_id is None or resume is None:
            raise MCPError(CONNECTION_CLOSED, "SSE stream ended without a response")
        if attempt >= MAX_RECONNECTION_ATTEMPTS:
            raise MCPError(CONNECTION_CLOSED, "SSE stream ended and reconnection attempts were exhausted")
        delay = stream.retry_ms if stream.retry_ms is not None else DEFAULT_RECONNECTION_DELAY_MS
        await anyio.sleep(delay / 1000)
        is_sse = False
        try:
            async with resume(stream.last_id) as resumed:
                resumed.raise_for_status()
                is_sse = resumed.headers.get("content-type", "").partition(";")[0].strip().lower() == SSE
                answer = await _read_events(resumed, request_id, on_progress, stream)
                attempt = 0  # reconnected: a stream that ends again starts counting afresh
        except httpx2.SSEError as exc:
            if is_sse:
                raise MCPError(CONNECTION_CLOSED, f"SSE stream failed: {exc}") from None
            attempt += 1
        except httpx2.HTTPError:
            attempt += 1
    return answer


async def _read_events(
    response: httpx2.Response, request_id: Any, on_progress: ProgressSink | None, stream: _Resumable
) -> JSONRPCResponse | JSONRPCError | None:
    async for event in httpx2.EventSource(response, max_event_size=None):
        if event.id:
            stream.last_id = event.id
        if event.retry is not None:
            stream.retry_ms = event.retry
        if event.event != "message" or not event.data:
            continue
        message = _event_message(event.data)
        if isinstance(message, JSONRPCResponse | JSONRPCError):
            return message.model_copy(update={"id": request_id})
        if isinstance(message, JSONRPCNotification) and message.method == "notifications/progress":
            if on_progress is not None and isinstance(message.params, dict):
                await on_progress(message.params)
    return None


def _event_message(data: str) -> JSONRPCMessage:
    try:
        return jsonrpc_message_adapter.validate_json(data, by_name=False)
    except ValidationError as exc:
        raise MCPError(PARSE_ERROR, f"Failed to parse SSE message: {exc}") from None
