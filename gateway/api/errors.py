"""Every error leaves the gateway shaped like the Anthropic API's:
``{"type": "error", "error": {"type": ..., "message": ...}}``."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from gateway.errors import TetherError
from gateway.store.base import StoreUnavailable

log = logging.getLogger("tether.api")

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    412: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


STORE_RETRY_AFTER_SECONDS = 2
"""What a client is told to wait while the database cannot serve (outages last seconds)."""


def error_response(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"type": "error", "error": {"type": error_type, "message": message}}, status_code=status
    )


async def tether_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TetherError)
    error = {"type": exc.error_type, "message": exc.message, **exc.extra()}
    return JSONResponse({"type": "error", "error": error}, status_code=exc.status_code)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.status_code != 404 else f"no route for {request.method} {request.url.path}"
    response = error_response(exc.status_code, _STATUS_TYPES.get(exc.status_code, "api_error"), message)
    response.headers.update(exc.headers or {})
    return response


async def client_disconnected(request: Request, exc: Exception) -> Response:
    """A client that hangs up mid-body is routine: one warning line, no traceback, no 500.

    The response is never delivered (the connection is gone); it only ends the request.
    """
    received = getattr(exc, "received", None)
    log.warning(
        "client disconnected before sending the whole body: %s %s (%s of %s bytes received)",
        request.method,
        request.url.path,
        "?" if received is None else received,
        request.headers.get("content-length", "?"),
    )
    return error_response(400, "invalid_request_error", "the client disconnected before sending the body")


async def store_unavailable(request: Request, exc: Exception) -> Response:
    """A database outage is the service's, not the request's: 503, and when to try again."""
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    response = error_response(
        503, "api_error", "The gateway's database is unavailable right now; retry shortly."
    )
    response.headers["retry-after"] = str(STORE_RETRY_AFTER_SECONDS)
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "api_error", "internal error")


HANDLERS = {
    TetherError: tether_error,
    HTTPException: http_error,
    ClientDisconnect: client_disconnected,
    StoreUnavailable: store_unavailable,
    Exception: unexpected_error,
}
