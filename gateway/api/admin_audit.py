"""The admin audit log: who changed what, append-only and hash-chained.

Every change (``POST``/``PUT``/``PATCH``/``DELETE``) to an administrative resource (keys,
vaults and credentials, agents, environments, tunnels and token reveals, MCP servers, virtual
servers and tokens, webhooks, deployments, egress credentials) is written twice to the log
``ADMIN_LOG``, kept with the session logs' chain machinery under a name no session can have:

- ``admin.request`` before it runs: the caller (role and key id; a configured key has none),
  the method and the path. If it cannot be written the change is refused with a 503, so nothing
  changes unrecorded.
- ``admin.result`` after: the status and the id of what was created or changed.

Request and response bodies are never recorded: they carry secrets (credentials, new keys,
revealed tunnel tokens). ``/v1/tether/admin_log`` lists the log (admin keys only), its
``/integrity`` the chain verdict; ``tether audit verify --admin`` checks it offline or online.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api import access
from gateway.api.errors import STORE_RETRY_AFTER_SECONDS, error_response
from gateway.api.pagination import decode_cursor, encode_cursor, limit_param
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.observability.insights import integrity as chain_integrity
from gateway.sessionlog.events import ADMIN_LOG, new_event
from gateway.store.base import EventQuery, StoreUnavailable
from gateway.store.chain import verify

log = logging.getLogger("tether.audit")

AUDITED = (
    "/v1/organizations/api_keys",
    "/v1/vaults",
    "/v1/agents",
    "/v1/environments",
    "/v1/tunnels",
    "/v1/mcp_servers",
    "/v1/mcp_virtual_servers",
    "/v1/mcp_tokens",
    "/v1/tether/webhooks",
    "/v1/tether/egress",
    "/v1/deployments",
)
NOT_ADMIN = re.compile(r"^/v1/environments/[^/]+/work(/|$)")
"""A worker's polls and heartbeats are its work, not administration."""
CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
KEEP_BODY = 64 * 1024
"""Bytes of a response read for the id of what it created (bodies are never stored)."""
MAX_PAGE = 1000


def audited(method: str, path: str) -> bool:
    return (
        method in CHANGES
        and any(path == p or path.startswith(p + "/") for p in AUDITED)
        and not NOT_ADMIN.match(path)
    )


class AdminAuditMiddleware:
    """Records audited requests around the app (inside the key check, which names the caller)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = getattr(scope["app"].state, "gateway", None)
        if scope["type"] != "http" or gateway is None or not audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        principal = access.principal_of(HTTPConnection(scope))
        request = new_event(
            "admin.request",
            actor={"role": principal.role, "key_id": principal.key_id},
            method=scope["method"],
            path=scope["path"],
        )
        try:
            await gateway.store.append_events(ADMIN_LOG, [request])
        except StoreUnavailable as exc:
            log.warning(
                "%s %s refused: the admin log cannot be written: %s", scope["method"], scope["path"], exc
            )
            response = error_response(
                503, "api_error", "The gateway's database is unavailable right now; retry shortly."
            )
            response.headers["retry-after"] = str(STORE_RETRY_AFTER_SECONDS)
            await response(scope, receive, send)
            return
        seen: dict[str, Any] = {"status": 500, "body": b""}

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and len(seen["body"]) < KEEP_BODY:
                seen["body"] += message.get("body", b"")[: KEEP_BODY - len(seen["body"])]
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            result = new_event(
                "admin.result",
                request_id=request["id"],
                status=seen["status"],
                resource_id=_resource_id(seen["body"]),
            )
            try:
                await gateway.store.append_events(ADMIN_LOG, [result])
            except Exception:  # the request is on record; its outcome is in the service log
                log.exception("could not record the result of admin request %s", request["id"])


def _resource_id(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = parsed.get("id") if isinstance(parsed, dict) else None
    return value if isinstance(value, str) else None


async def list_log(request: Request) -> JSONResponse:
    """``?limit`` (default 100, at most 1000) and ``?page``: oldest first."""
    token = request.query_params.get("page")
    after = decode_cursor(token) if token else 0
    limit = limit_param(request, default=100, maximum=MAX_PAGE)
    events = await state(request).store.read_events(ADMIN_LOG, EventQuery(after_seq=after, limit=limit + 1))
    more = len(events) > limit
    events = events[:limit]
    return JSONResponse(
        {"data": [e.body for e in events], "next_page": encode_cursor(events[-1].seq) if more else None}
    )


async def log_integrity(request: Request) -> JSONResponse:
    verdict = verify(ADMIN_LOG, await state(request).store.read_chain(ADMIN_LOG))
    return JSONResponse(chain_integrity(verdict))


routes = [
    endpoint("/v1/tether/admin_log", get=list_log),
    endpoint("/v1/tether/admin_log/integrity", get=log_integrity),
]
