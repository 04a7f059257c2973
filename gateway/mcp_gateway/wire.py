"""One JSON-RPC request to an HTTP upstream, spoken on the wire without the SDK's client.

The express lane (``express``) relays ``tools/call`` this way: the request is one POST,
and its answer is either one JSON body or an SSE stream carrying the request's
``notifications/progress`` and then its response. Nothing is validated beyond the
envelope (the id, a ``result`` or an ``error``); the result's outline is the express
lane's to check. The body passes through the upstream's ``LimitedTransport``, so the
message limit and the 413 rule apply exactly as on the SDK path.

Failures keep the SDK path's kinds, so ``UpstreamPool`` sorts them the same way: an
``error`` member is an ``MCPError`` (the upstream is alive), anything else (a refused
connection, a stream cut before the answer, a body that is not JSON-RPC) is an
``UpstreamProtocolError`` or an ``httpx2.HTTPError`` (unreachable).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
from mcp import MCPError
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    encode_header_value,
)

from gateway.mcp_gateway.upstreams import Wire

ProgressSink = Callable[[dict[str, Any]], Awaitable[None]]
"""Receives the ``params`` of each ``notifications/progress`` the upstream sends for the request."""
ACCEPT = "application/json, text/event-stream"
SESSION_HEADER = "mcp-session-id"


class UpstreamProtocolError(Exception):
    """The upstream answered something that is not a JSON-RPC answer to the request."""


def request_headers(message: dict[str, Any], protocol_version: str, session_id: str | None) -> dict[str, str]:
    """The routing headers the 2026-07-28 wire requires (``Mcp-Method``, ``Mcp-Name``), or a session's."""
    headers = {
        MCP_PROTOCOL_VERSION_HEADER: protocol_version,
        "accept": ACCEPT,
        "content-type": "application/json",
    }
    if session_id is not None:
        headers[SESSION_HEADER] = session_id
        return headers
    headers[MCP_METHOD_HEADER] = message["method"]
    name = (message.get("params") or {}).get("name")
    if isinstance(name, str):
        headers[MCP_NAME_HEADER] = encode_header_value(name)
    return headers


@asynccontextmanager
async def _posted(
    wire: Wire, message: dict[str, Any], headers: dict[str, str]
) -> AsyncIterator[httpx2.Response]:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    timeout = {"connect": 10.0, "read": wire.timeout, "write": wire.timeout, "pool": wire.timeout}
    request = httpx2.Request(
        "POST", wire.url, content=body, headers={**wire.headers, **headers}, extensions={"timeout": timeout}
    )
    response = await wire.transport.handle_async_request(request)
    try:
        yield response
    finally:
        await response.aclose()


async def exchange(
    wire: Wire, message: dict[str, Any], headers: dict[str, str], on_progress: ProgressSink | None = None
) -> dict[str, Any]:
    """POST ``message`` (a request) and return its ``result``; an ``error`` answer raises ``MCPError``."""
    async with _posted(wire, message, headers) as response:
        content_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if content_type == "text/event-stream" and response.status_code == 200:
            reply = await _from_events(response, message["id"], on_progress)
        elif content_type == "application/json":
            reply = _parsed(await response.aread())
        else:
            response.raise_for_status()
            raise UpstreamProtocolError(
                f"it answered HTTP {response.status_code} with {content_type or 'no body'}"
            )
    return _result_of(reply, message["id"])


async def notify(
    http: httpx2.AsyncClient, url: str, message: dict[str, Any], headers: dict[str, str]
) -> None:
    """POST a notification (a session's ``notifications/initialized`` or ``/cancelled``)."""
    body = json.dumps(message, separators=(",", ":")).encode()
    response = await http.post(url, content=body, headers=headers)
    if response.status_code >= 400:
        raise UpstreamProtocolError(f"it refused {message['method']} with HTTP {response.status_code}")


async def _from_events(
    response: httpx2.Response, request_id: Any, on_progress: ProgressSink | None
) -> dict[str, Any]:
    async for event in httpx2.EventSource(response, max_event_size=None):
        if event.event not in ("", "message") or not event.data:
            continue
        message = _parsed(event.data.encode())
        if message.get("id") == request_id and ("result" in message or "error" in message):
            return message
        if message.get("method") == "notifications/progress" and on_progress is not None:
            params = message.get("params")
            if isinstance(params, dict):
                await on_progress(params)
    raise UpstreamProtocolError("it closed the stream without answering the request")


def _parsed(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        raise UpstreamProtocolError("it answered with a body that is not JSON") from None
    if not isinstance(message, dict):
        raise UpstreamProtocolError("it answered with JSON that is not one JSON-RPC message")
    return message


def _result_of(reply: dict[str, Any], request_id: Any) -> dict[str, Any]:
    error = reply.get("error")
    if isinstance(error, dict):
        code, text = error.get("code"), error.get("message")
        if isinstance(code, int) and isinstance(text, str):
            raise MCPError(code, text, error.get("data"))
        raise UpstreamProtocolError("it answered with a malformed JSON-RPC error")
    result = reply.get("result")
    if reply.get("id") != request_id or not isinstance(result, dict):
        raise UpstreamProtocolError("its answer is not a JSON-RPC result for the request")
    return result


def cancelled(request_id: Any, reason: str) -> dict[str, Any]:
    params = {"requestId": request_id, "reason": reason}
    return {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
