"""JSON-RPC error codes and bodies the gateway's ``/mcp`` front door answers with.

The front door rejects some requests before any MCP session sees them (authentication,
scope, size, rate). It answers with the fitting HTTP status *and* a JSON-RPC error body:
HTTP-aware intermediaries and OAuth clients read the status and headers, while the MCP SDK
surfaces a JSON error body on a non-2xx response as an ``MCPError`` carrying our code,
message and data, so an MCP client can tell a rate limit from a missing key.

Codes live in JSON-RPC's implementation-defined server range (-32000..-32099) and avoid
the ones the SDK already uses (-32000, -32001, -32020..-32022, -32042).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response

AUTHENTICATION_REQUIRED = -32081
"""HTTP 401: no credential, or one that is not a gateway API key or a valid gateway JWT."""
FORBIDDEN = -32083
"""HTTP 403: a valid JWT that is not scoped to this virtual server."""
VIRTUAL_SERVER_NOT_FOUND = -32084
"""HTTP 404: no virtual server of that name."""
REQUEST_TOO_LARGE = -32089
"""HTTP 413: the request body exceeds the virtual server's ``max_request_bytes``."""
RATE_LIMITED = -32090
"""HTTP 429: the caller's token bucket is empty; ``data.retry_after`` says for how long."""

INVALID_REQUEST = -32600
"""HTTP 400: not a single JSON-RPC message (batches were removed from MCP in 2025-06-18)."""
"""HTTP 400: not a single JSON-RPC message (batches were removed from MCP in 2025-06-18)."""
PARSE_ERROR = -32700
"""HTTP 400: a body JSON parsers disagree on (a string holding an unpaired UTF-16 surrogate)."""

CODES = {
    400: INVALID_REQUEST,
    401: AUTHENTICATION_REQUIRED,
    403: FORBIDDEN,
    404: VIRTUAL_SERVER_NOT_FOUND,
    413: REQUEST_TOO_LARGE,
    429: RATE_LIMITED,
}


def error_response(
    status: int,
    message: str,
    *,
    request_id: Any = None,
    data: Any = None,
    headers: dict[str, str] | None = None,
    code: int | None = None,
) -> Response:
    """``{"jsonrpc": "2.0", "id": ..., "error": {"code", "message", "data"?}}`` at ``status``;
    the code is the status's own unless ``code`` is given."""
    error: dict[str, Any] = {"code": code if code is not None else CODES[status], "message": message}
    if data is not None:
        error["data"] = data
    body = {"jsonrpc": "2.0", "id": request_id, "error": error}
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
