"""API-key authentication: every ``/v1`` request needs a configured ``x-api-key``."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send


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

    def _valid(self, presented: bytes | None) -> bool:
        if not presented:
            return False
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        return matched

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
        if self._valid(presented):
            await self.app(scope, receive, send)
            return
        message = "invalid x-api-key" if presented else "missing x-api-key header"
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401, "reason": message})
            return
        body = json.dumps({"type": "error", "error": {"type": "authentication_error", "message": message}})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
