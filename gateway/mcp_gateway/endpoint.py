"""The front door of ``/mcp/{name}``: everything decided before the MCP SDK sees a request.

In order: authenticate (API key or gateway JWT: 401 with ``WWW-Authenticate`` so
OAuth-aware clients can discover the resource metadata), authorize (a JWT without the
virtual server in scope: 403), resolve the virtual server (404), read the body up to the
virtual server's ``max_request_bytes`` (413), refuse JSON-RPC batches (400: MCP has
none since 2025-06-18, and one would slip several calls past the limiter), and charge the caller's token bucket for the
methods that reach an upstream (``tools/call``, ``resources/read``, ``prompts/get``: 429
with ``Retry-After``). Rejections carry a JSON-RPC error body too (see ``rpc_errors``), and
rejected calls are audited.

Then the request goes to the SDK's streamable HTTP session manager, which serves both the
2026-07-28 single-exchange wire and legacy sessions. Legacy sessions are bound to the
caller *and* the virtual server (the SDK compares ``scope["user"]`` on every request), so
a session id cannot be replayed by another caller or on another virtual server.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic_core
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from gateway.mcp_gateway import express, rpc_errors
from gateway.mcp_gateway.access import Access, AccessDenied, Caller
from gateway.mcp_gateway.audit import AuditLog, CallRecord
from gateway.mcp_gateway.context import SCOPE_KEY, RequestInfo, current_virtual_server
from gateway.mcp_gateway.express import Express
from gateway.mcp_gateway.governance import Governance
from gateway.mcp_gateway.notifications import Broadcaster
from gateway.mcp_gateway.ratelimit import RateLimiter
from gateway.mcp_gateway.registry import Registry
from gateway.store.base import Body

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
CHARGED_METHODS = frozenset({"tools/call", "resources/read", "prompts/get"})
METADATA_PATH = "/.well-known/oauth-protected-resource/mcp/{name}"


class TooLarge(Exception):
    pass


class Rejected(Exception):
    """Refused at the front door; ``response`` says why."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


class Endpoint:
    """ASGI app for ``/mcp/{name}``."""

    def __init__(
        self,
        registry: Registry,
        access: Access,
        governance: Governance,
        limiter: RateLimiter,
        audit: AuditLog,
        broadcaster: Broadcaster,
        session_manager: StreamableHTTPSessionManager,
        public_url: str | None,
        view_of: Callable[[RequestInfo], Awaitable[object]],
        express: Express | None = None,
    ) -> None:
        self.registry = registry
        self.access = access
        self.governance = governance
        self.limiter = limiter
        self.audit = audit
        self.broadcaster = broadcaster
        self.session_manager = session_manager
        self.public_url = public_url
        self.view_of = view_of
        self.express = express

    def base_url(self, request: Request) -> str:
        return (self.public_url or str(request.base_url)).rstrip("/")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        try:
            caller, virtual_server, body, message = await self._admit(request, receive)
        except Rejected as rejected:
            await rejected.response(scope, receive, send)
            return
        info = RequestInfo(caller, virtual_server)
        if self.express is not None and (call := express.admit(scope, message)) is not None:
            if await self.express.serve(call, info, scope, receive, send):
                return
        elif message.get("method") == "tools/call":
            # The SDK checks Mcp-Param-* headers against the current view's schemas: have one.
            with contextlib.suppress(Exception):  # a failure here is the handler's to report
                await self.view_of(info)
        scope[SCOPE_KEY] = info
        # Binds legacy sessions to this caller on this virtual server (the SDK checks it per request).
        name = virtual_server["name"]
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=f"{caller.id}@{name}", scopes=[]))
        session_id = request.headers.get("mcp-session-id")
        token = current_virtual_server.set(name)
        try:
            await self.session_manager.handle_request(
                scope,
                _replay(body, receive) if body is not None else receive,
                self._watch(session_id, send),
            )
        finally:
            current_virtual_server.reset(token)
            if scope["method"] == "DELETE" and session_id:
                self.broadcaster.forget(session_id)

    async def _admit(
        self, request: Request, receive: Receive
    ) -> tuple[Caller, Body, bytes | None, dict[str, Any]]:
        """Caller, virtual server, and (for a POST) the body already read and its message; or ``Rejected``."""
        name: str = request.path_params["name"]
        try:
            caller = self.access.authenticate(request.headers)
            self.access.authorize(caller, name)
        except AccessDenied as denied:
            raise Rejected(self._denied(request, name, denied)) from None
        virtual_server = await self.registry.virtual_server(name)
        if virtual_server is None:
            raise Rejected(rpc_errors.error_response(404, f"no virtual server named {name!r}"))
        if request.method != "POST":
            return caller, virtual_server, None, {}
        limits = self.governance.limits(virtual_server)
        started = time.perf_counter()
        try:
            body = await _read_body(request.headers, receive, limits.max_request_bytes)
        except TooLarge:
            await self._audit_rejection(caller, name, request.headers, None, "too_large", started)
            message = f"request body exceeds this virtual server's limit of {limits.max_request_bytes} bytes"
            raise Rejected(rpc_errors.error_response(413, message)) from None
        if _unpaired_surrogate(body):
            await self._audit_rejection(caller, name, request.headers, None, "error", started)
            unpaired = "Parse error: a string holds an unpaired UTF-16 surrogate, which no UTF-8 upstream can be sent"
            raise Rejected(rpc_errors.error_response(400, unpaired, code=rpc_errors.PARSE_ERROR))
        parsed = _parse(body)
        if parsed is None:
            batch = "a JSON-RPC batch is not accepted: send one message per request"
            raise Rejected(rpc_errors.error_response(400, batch))
        if parsed.get("method") in CHARGED_METHODS:
            wait = self.limiter.take((caller.id, name), limits.rate_per_second, limits.burst)
            if wait is not None:
                await self._audit_rejection(caller, name, request.headers, parsed, "rate_limited", started)
                raise Rejected(
                    rpc_errors.error_response(
                        429,
                        f"rate limit exceeded; retry in {wait:.2f}s",
                        request_id=parsed.get("id"),
                        data={"retry_after": round(wait, 3)},
                        headers={"Retry-After": str(max(1, math.ceil(wait)))},
                    )
                )
        return caller, virtual_server, body, parsed

    def _watch(self, session_id: str | None, send: Send) -> Send:
        """Forget a legacy session the SDK no longer knows (it answers 404 for it)."""
        if not session_id:
            return send

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 404:
                self.broadcaster.forget(session_id)
            await send(message)

        return watched

    def _denied(self, request: Request, name: str, denied: AccessDenied) -> Response:
        metadata = self.base_url(request) + METADATA_PATH.format(name=name)
        challenge = f'Bearer realm="tether", resource_metadata="{metadata}"'
        if denied.status == 403:
            challenge += f', error="insufficient_scope", scope="mcp:{name}"'
        elif denied.presented:
            challenge += ', error="invalid_token"'
        return rpc_errors.error_response(
            denied.status, denied.message, headers={"WWW-Authenticate": challenge}
        )

    async def _audit_rejection(
        self,
        caller: Caller,
        name: str,
        headers: Headers,
        message: dict[str, Any] | None,
        outcome: str,
        started: float,
    ) -> None:
        params = (message or {}).get("params")
        params = params if isinstance(params, dict) else {}
        method = (message or {}).get("method") or headers.get("mcp-method") or "unknown"
        tool = params.get("name") or params.get("uri") or headers.get("mcp-name")
        await self.audit.record(
            CallRecord(
                caller=caller,
                virtual_server=name,
                method=str(method),
                tool=str(tool) if tool is not None else None,
                upstream=None,
                upstream_tool=None,
                arguments=params.get("arguments") if message is not None else None,
                outcome=outcome,
                latency_ms=(time.perf_counter() - started) * 1000,
                protocol_version=headers.get("mcp-protocol-version"),
            )
        )

    async def resource_metadata(self, request: Request) -> JSONResponse:
        """RFC 9728 protected resource metadata, named by the 401's ``resource_metadata``."""
        name = request.path_params["name"]
        base = self.base_url(request)
        return JSONResponse(
            {
                "resource": f"{base}/mcp/{name}",
                "bearer_methods_supported": ["header"],
                "scopes_supported": [f"mcp:{name}"],
                "resource_name": f"Tether MCP gateway: {name}",
            }
        )


async def _read_body(headers: Headers, receive: Receive, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            raise TooLarge
        if not message.get("more_body", False):
            break
    return bytes(chunks)


def _parse(body: bytes) -> dict[str, Any] | None:
    """The message, so limits know its method; None for a batch (which would dodge them).

    Best effort otherwise: anything that is not a JSON object reaches the SDK, which
    rejects it properly.
    """
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if isinstance(message, list):
        return None
    return message if isinstance(message, dict) else {}


def _unpaired_surrogate(body: bytes) -> bool:
    """Whether a ``\\uD800``-``\\uDFFF`` escape in ``body`` is left unpaired.

    ``json.loads`` (and so the SDK) accepts one, but the string can then be neither sent
    upstream nor digested for the audit, and the call would fail as if the upstream had.
    """
    if not _SURROGATE_ESCAPE.search(body):
        return False
    try:
        pydantic_core.from_json(body)
    except ValueError:
        return True
    return False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
