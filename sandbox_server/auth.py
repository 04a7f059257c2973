"""The sandbox's MCP endpoint answers only whoever started it.

Whoever starts a ``tether sandbox`` (the gateway's pool, a tunnel worker) generates a fresh
random token per start (``new_token``) and passes it in the child's environment as
``TETHER_SANDBOX_TOKEN``, never in argv. The server pops it from its environment at once
(``take_token``), so nothing it starts inherits it, and, when serving HTTP, refuses every
request that does not carry ``Authorization: Bearer <token>`` with 401 before the MCP app
sees it (``BearerAuth``). Without a token it does not serve HTTP at all: any local process
could otherwise run commands in the workspace. Over stdio no token is needed: only the
parent holds the pipes.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "TETHER_SANDBOX_TOKEN"
MISSING_TOKEN = (
    f"refusing to serve HTTP without a token: set {TOKEN_ENV} (the gateway and the tunnel "
    "worker set it for the sandboxes they start), or use --stdio"
)
_BODY = json.dumps({"error": "a valid Authorization: Bearer token is required"}).encode()


def new_token() -> str:
    return secrets.token_urlsafe(32)


def bearer_headers(token: str) -> dict[str, str]:
    """The headers a client sends to the sandbox started with ``token``."""
    return {"Authorization": f"Bearer {token}"}


def take_token(environ: dict[str, str] | None = None) -> str | None:
    """Remove the token from the environment (``os.environ`` by default) and return it."""
    source = os.environ if environ is None else environ
    token = source.pop(TOKEN_ENV, None)
    return token or None


def authorized(headers: Mapping[str, str] | list[tuple[bytes, bytes]], token: str) -> bool:
    """Whether exactly one ``Authorization`` header carries ``Bearer <token>`` (constant time)."""
    if isinstance(headers, Mapping):
        values = [v.encode("latin-1") for k, v in headers.items() if k.lower() == "authorization"]
    else:
        values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1:
        return False
    scheme, _, presented = values[0].partition(b" ")
    # Compared whatever the scheme, so a wrong scheme costs the same time as a wrong token.
    matches = hmac.compare_digest(presented.strip(), token.encode())
    return matches and scheme.lower() == b"bearer"


class BearerAuth:
    """ASGI wrapper: requests without the bearer token get 401 and never reach ``app``.

    Only ``lifespan`` passes through unauthenticated (it is the server's own start and stop,
    not a request); ``http`` needs the token and ``websocket`` is closed unless it has it.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        if not token:
            raise ValueError("BearerAuth needs a non-empty token")
        self.app = app
        self._token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" or authorized(scope.get("headers") or [], self._token):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode()),
                    (b"www-authenticate", b'Bearer realm="tether-sandbox"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
