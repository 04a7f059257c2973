"""What the front door learned about a request, handed to the MCP handlers.

The endpoint authenticates and resolves the virtual server before the MCP SDK sees the
request, and leaves a ``RequestInfo`` in the ASGI scope. Handlers reach the Starlette
request through ``ctx.request`` (on both the 2026-07-28 path and legacy sessions, where
each POST carries its own request), so identity is per request, never per session.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

from mcp import MCPError
from mcp.types import INVALID_REQUEST

from gateway.mcp_gateway.access import Caller
from gateway.store.base import Body

SCOPE_KEY = "tether.mcp_gateway"

current_virtual_server: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tether_mcp_virtual_server", default=None
)
"""Set by the endpoint for code the SDK calls before handlers run (tool schema lookups)."""


@dataclass(frozen=True)
class RequestInfo:
    caller: Caller
    virtual_server: Body


def request_info(ctx: Any) -> RequestInfo:
    """The front door's findings for a handler's ``ServerRequestContext``."""
    request = getattr(ctx, "request", None)
    info = request.scope.get(SCOPE_KEY) if request is not None else None
    if not isinstance(info, RequestInfo):
        # Only reachable if the MCP app were mounted without the endpoint in front of it.
        raise MCPError(INVALID_REQUEST, "request did not come through the gateway's front door")
    return info
