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
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
from mcp import MCPError
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
from pydantic import ValidationError

from gateway.mcp_gateway.sizing import WATCH_EXTENSION
from gateway.mcp_gateway.upstreams import Wire

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


async def exchange(
    wire: Wire, message: dict[str, Any], headers: dict[str, str], on_progress: ProgressSink | None = None
) -> dict[str, Any]:
    """POST ``message`` (a request) and return its raw ``result``; an error answer raises ``MCPError``."""
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
        reply = await _answer(response, message["id"], on_progress)
    if isinstance(reply, JSONRPCError):
        raise MCPError.from_error_data(reply.error)
    return reply.result


async def _answer(
    response: httpx2.Response, request_id: Any, on_progress: ProgressSink | None
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
    if content_type.startswith("text/event-stream"):
        return await _from_events(response, request_id, on_progress)
    raise MCPError(INVALID_REQUEST, f"Unexpected content type: {content_type}")


async def _from_events(
    response: httpx2.Response, request_id: Any, on_progress: ProgressSink | None
) -> JSONRPCResponse | JSONRPCError:
    try:
        async for event in httpx2.EventSource(response, max_event_size=None):
            if event.event != "message" or not event.data:
                continue
            message = _event_message(event.data)
            if isinstance(message, JSONRPCResponse | JSONRPCError):
                return message.model_copy(update={"id": request_id})
            if isinstance(message, JSONRPCNotification) and message.method == "notifications/progress":
                if on_progress is not None and isinstance(message.params, dict):
                    await on_progress(message.params)
    except httpx2.SSEError as exc:
        raise MCPError(CONNECTION_CLOSED, f"SSE stream failed: {exc}") from None
    except httpx2.TransportError:
        pass  # a broken stream: no answer, as below
    raise MCPError(CONNECTION_CLOSED, "SSE stream ended without a response")


def _event_message(data: str) -> JSONRPCMessage:
    try:
        return jsonrpc_message_adapter.validate_json(data, by_name=False)
    except ValidationError as exc:
        raise MCPError(PARSE_ERROR, f"Failed to parse SSE message: {exc}") from None
