"""Who may use a virtual server: the gateway's API keys, or JWTs scoped to virtual servers.

- An API key (``x-api-key``, or ``Authorization: Bearer <key>``) is an operator credential:
  it reaches every virtual server. The audit log records it as ``key_<sha256 prefix>``,
  never the key.
- A gateway JWT (``Authorization: Bearer <jwt>``; HS256, issuer ``tether``, audience
  ``tether-mcp``) carries ``scope: "mcp:<name> ..."`` (``mcp:*`` for all) and a subject.
  Tokens are minted through ``POST /v1/mcp_tokens`` by an API-key holder, so an MCP client
  can be given access to exactly one virtual server, for a bounded time. The audit log
  records the token's ``sub``.

No credential or an invalid one is a 401; a valid token without the virtual server in its
scope is a 403. The signing secret is derived from the vault master key unless
``TETHER_MCP_JWT_SECRET`` is set, so rotating the master key invalidates gateway tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import jwt

ISSUER = "tether"
AUDIENCE = "tether-mcp"
SCOPE_PREFIX = "mcp:"
ALL = "*"


@dataclass(frozen=True)
class Caller:
    kind: Literal["api_key", "jwt"]
    id: str
    """What the audit log records: ``key_<hash prefix>`` or ``jwt:<subject>``."""
    subject: str | None = None
    scopes: frozenset[str] | None = None
    """Virtual server names the caller may reach; None means all (API keys, ``mcp:*``)."""
    token_id: str | None = None

    def may_use(self, virtual_server: str) -> bool:
        return self.scopes is None or virtual_server in self.scopes

    def to_json(self) -> dict[str, Any]:
        return {"type": self.kind, "id": self.id, "subject": self.subject, "token_id": self.token_id}


class AccessDenied(Exception):
    def __init__(self, status: Literal[401, 403], message: str, presented: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.presented = presented
        """Whether some credential was presented (RFC 6750 then says ``error="invalid_token"``)."""


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


class Access:
    def __init__(self, api_keys: list[str], secret: bytes) -> None:
        self._keys = [(key.encode(), key_id(key)) for key in api_keys]
        self._secret = secret

    def authenticate(self, headers: Mapping[str, str]) -> Caller:
        presented = headers.get("x-api-key")
        if presented is None:
            authorization = headers.get("authorization", "")
            if authorization[:7].lower() == "bearer ":
                presented = authorization[7:].strip()
        if not presented:
            raise AccessDenied(401, "authentication required: send x-api-key or Authorization: Bearer")
        matched: str | None = None
        for key, identity in self._keys:
            if hmac.compare_digest(presented.encode(), key):
                matched = identity
        if matched is not None:
            return Caller("api_key", matched)
        if presented.count(".") == 2:
            return self._verify(presented)
        raise AccessDenied(401, "invalid credentials", presented=True)

    def _verify(self, token: str) -> Caller:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "sub", "aud", "iss", "scope"]},
            )
        except jwt.ExpiredSignatureError:
            raise AccessDenied(401, "token expired", presented=True) from None
        except jwt.PyJWTError as exc:
            raise AccessDenied(401, f"invalid token ({type(exc).__name__})", presented=True) from None
        scope = claims["scope"]
        if not isinstance(scope, str):
            raise AccessDenied(401, "invalid token (scope)", presented=True)
        names = {item[len(SCOPE_PREFIX) :] for item in scope.split() if item.startswith(SCOPE_PREFIX)}
        subject = str(claims["sub"])
        return Caller(
            "jwt",
            f"jwt:{subject}",
            subject=subject,
            scopes=None if ALL in names else frozenset(names),
            token_id=claims.get("jti"),
        )

    def authorize(self, caller: Caller, virtual_server: str) -> None:
        if not caller.may_use(virtual_server):
            raise AccessDenied(403, f"this token is not scoped to virtual server {virtual_server!r}", True)

    def mint(
        self, subject: str, virtual_servers: list[str], expires_in: int, now: float | None = None
    ) -> dict[str, Any]:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": issued,
            "exp": issued + expires_in,
            "jti": "mcptok_" + secrets.token_urlsafe(12),
            "scope": " ".join(SCOPE_PREFIX + name for name in sorted(set(virtual_servers))),
        }
        return {"token": jwt.encode(claims, self._secret, algorithm="HS256"), **claims}
