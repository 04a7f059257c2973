"""API-key authentication and role checks: every ``/v1`` request needs a key.

A key is either one of the gateway's configured keys (``TETHER_API_KEYS``, the ``admin``
role) or a stored key with a role (``gateway.resources.api_keys``). The role is checked
against the path and method here, before routing (``gateway.api.access``), and the caller's
principal is left in the scope's state for the few checks that need the body.
"""

from __future__ import annotations

import hmac
import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api import access
from gateway.api.errors import STORE_RETRY_AFTER_SECONDS
from gateway.resources import api_keys
from gateway.resources.api_keys import ADMIN, Principal
from gateway.store.base import StoreUnavailable

log = logging.getLogger("tether.api")


class APIKeyMiddleware:
    """Pure ASGI, so it guards HTTP and WebSocket routes alike (and SSE without buffering)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: list[str],
        public_paths: tuple[str, ...] = ("/health",),
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        if not keys:
            raise ValueError("at least one API key must be configured")
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.public_paths = public_paths
        self.public_prefixes = public_prefixes
        """Paths under these prefixes authenticate their callers themselves."""

    def _configured(self, presented: bytes) -> bool:
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        return matched

    async def _principal(self, scope: Scope, presented: bytes | None) -> Principal | None:
        if not presented:
            return None
        if self._configured(presented):
            return ADMIN
        if not presented.startswith(api_keys.TOKEN_PREFIX.encode() + b"."):
            return None
        gateway = getattr(scope["app"].state, "gateway", None)
        if gateway is None:  # still starting: only configured keys are known
            return None
        client = scope.get("client")
        return await api_keys.authenticate(
            gateway.store, presented.decode("ascii", "replace"), client[0] if client else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] not in ("http", "websocket")
            or path in self.public_paths
            or path.startswith(self.public_prefixes)
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        presented = headers.get(b"x-api-key")
        if presented is None:
            authorization = headers.get(b"authorization", b"")
            if authorization.lower().startswith(b"bearer "):
                presented = authorization[7:].strip()
        try:
            principal = await self._principal(scope, presented)
        except StoreUnavailable as exc:
            log.warning("%s: cannot check a stored API key: %s", path, exc)
            await _refuse(
                scope,
                send,
                503,
                "api_error",
                "The gateway's database is unavailable right now; retry shortly.",
            )
            return
        if principal is None:
            message = "invalid x-api-key" if presented else "missing x-api-key header"
            await _refuse(scope, send, 401, "authentication_error", message)
            return
        method = "GET" if scope["type"] == "websocket" else scope["method"]
        if not access.allows(principal, method, path):
            await _refuse(scope, send, 403, "permission_error", access.denial(principal, method, path))
            return
        scope.setdefault("state", {})[access.PRINCIPAL] = principal
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, send: Send, status: int, error_type: str, message: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + status, "reason": message[:120]})
        return
    body = json.dumps({"type": "error", "error": {"type": error_type, "message": message}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", str(STORE_RETRY_AFTER_SECONDS).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})
