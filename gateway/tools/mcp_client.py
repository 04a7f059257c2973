"""The gateway's MCP client: list and call tools on a server over streamable HTTP.

Connections are short-lived (2026-07-28 servers are sessionless), so a restarted
or replaced server is picked up on the next call without any reconnect logic.
Headers passed here (credentials, later) are added on this last hop only.

Messages up to ``TETHER_MCP_MAX_MESSAGE_BYTES`` (16 MiB by default, as for the MCP
gateway) pass; a bigger answer, or a server's HTTP 413, is an ``is_error`` tool result
naming the limit, not "unavailable" (see ``gateway.mcp_gateway.sizing``). A call
cancelled with its session's task (an interrupt) tells a session-based server and ends
its session, as the MCP gateway does.
"""

from __future__ import annotations

import functools
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp.types as mcp_types
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.dispatcher import ProgressFnT

from gateway.mcp_gateway.settings import max_message_bytes
from gateway.mcp_gateway.sizing import ABANDON_TIMEOUT, LimitedTransport, SizeWatch, abandon

log = logging.getLogger("tether.tools")

DEFAULT_TIMEOUT = 120.0
MAX_RESULT_CHARS = 200_000


class MCPUnavailable(Exception):
    """The server could not be reached or broke the protocol; the message is safe to show.

    ``never_connected`` says the request cannot have been delivered (the connection itself
    failed), so trying it again elsewhere cannot run the tool twice.
    """

    def __init__(self, message: str, *, never_connected: bool = False) -> None:
        super().__init__(message)
        self.never_connected = never_connected


@dataclass(frozen=True)
class ToolOutcome:
    content: list[dict[str, Any]]
    """Blocks in the Managed Agents shape (text, image, ...)."""
    is_error: bool


TransportFor = Callable[[str], httpx2.AsyncBaseTransport | None]
"""Picks a transport by URL: tunnelled hosts get one that crosses the tunnel, others None."""


@functools.cache
def _tls() -> ssl.SSLContext:
    """One verifying TLS context for every call (building one costs ~20 ms)."""
    return ssl.create_default_context()


@asynccontextmanager
async def connect(
    url: str,
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    transport_for: TransportFor | None = None,
    watch: SizeWatch | None = None,
) -> AsyncIterator[Client]:
    supplied = transport_for(url) if transport_for is not None else None
    transport = LimitedTransport(
        supplied or httpx2.AsyncHTTPTransport(verify=_tls()), watch or SizeWatch(max_message_bytes())
    )
    http = httpx2.AsyncClient(
        headers=headers or {}, timeout=httpx2.Timeout(timeout, connect=10.0), transport=transport
    )
    # The body limit is LimitedTransport's; the SDK's 1 MiB per SSE event is lifted.
    streams = streamable_http_client(url, http_client=http, max_sse_event_size=None)
    watch = transport.watch
    async with http, Client(streams, read_timeout_seconds=timeout) as client:
        try:
            yield client
        except anyio.get_cancelled_exc_class():
            # An interrupted session: the server is told and its session (if any) is ended.
            with anyio.CancelScope(shield=True), anyio.move_on_after(ABANDON_TIMEOUT):
                await abandon(http, url, watch)
            raise


async def list_tools(
    url: str, headers: dict[str, str] | None = None, transport_for: TransportFor | None = None
) -> list[mcp_types.Tool]:
    watch = SizeWatch(max_message_bytes())
    try:
        async with connect(url, headers, timeout=30.0, transport_for=transport_for, watch=watch) as client:
            result = await client.list_tools()
            tools = list(result.tools)
            while result.next_cursor:
                result = await client.list_tools(cursor=result.next_cursor)
                tools += result.tools
            if (oversize := watch.problem()) is not None:  # one the SDK got past: never trusted
                raise oversize
            return tools
    except Exception as exc:
        too_large = watch.problem()
        raise MCPUnavailable(str(too_large) if too_large else _describe(exc)) from exc


async def call_tool(
    url: str,
    name: str,
    arguments: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    transport_for: TransportFor | None = None,
    on_progress: ProgressFnT | None = None,
) -> ToolOutcome:
    """``on_progress`` asks the server for progress (a progress token) and receives each
    ``notifications/progress`` as (progress, total, message) while the call runs."""
    watch = SizeWatch(max_message_bytes())
    try:
        async with connect(url, headers, timeout, transport_for, watch) as client:
            result = await client.call_tool(name, arguments, progress_callback=on_progress)
    except Exception as exc:
        too_large = watch.problem()
        if too_large is not None:
            return _error_outcome(f"Tool {name!r} failed: {too_large}.")
        if isinstance(exc, MCPError):
            return _error_outcome(f"MCP error: {exc}")
        raise MCPUnavailable(_describe(exc), never_connected=_never_connected(exc)) from exc
    if (too_large := watch.problem()) is not None:  # one the SDK got past: never trusted
        return _error_outcome(f"Tool {name!r} failed: {too_large}.")
    return ToolOutcome(content=to_blocks(result), is_error=bool(result.is_error))


def _error_outcome(text: str) -> ToolOutcome:
    return ToolOutcome(content=[{"type": "text", "text": text}], is_error=True)


def to_blocks(result: mcp_types.CallToolResult) -> list[dict[str, Any]]:
    """Map MCP content onto the blocks a tool result event carries."""
    blocks: list[dict[str, Any]] = []
    for item in result.content:
        if isinstance(item, mcp_types.TextContent):
            blocks.append({"type": "text", "text": item.text})
        elif isinstance(item, mcp_types.ImageContent):
            blocks.append(
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": item.mime_type, "data": item.data},
                }
            )
        else:
            blocks.append({"type": "text", "text": item.model_dump_json(by_alias=True, exclude_none=True)})
    if not blocks and result.structured_content is not None:
        blocks.append({"type": "text", "text": json.dumps(result.structured_content)})
    total = 0
    for block in blocks:
        if block["type"] == "text":
            room = max(MAX_RESULT_CHARS - total, 0)
            if len(block["text"]) > room:
                block["text"] = block["text"][:room] + "\n[output truncated by the gateway]"
            total += len(block["text"])
    return blocks


def _never_connected(exc: BaseException) -> bool:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return isinstance(exc, httpx2.ConnectError)


def _describe(exc: BaseException) -> str:
    """One line for the model and the log; exception groups are unwrapped to their cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, httpx2.ConnectError):
        return str(exc).splitlines()[0][:300] if str(exc) else "connection refused"
    if isinstance(exc, httpx2.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
