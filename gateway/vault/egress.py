"""What a session's egress proxy may substitute, and the short-lived token it fetches it with.

The sandbox sees only placeholders (``tether-ph-…``) in its environment. The proxy,
outside the sandbox, swaps a placeholder for the real value only in requests to that
credential's allowed hosts. It authenticates with a JWT scoped to one session and valid
for minutes; a token for another session, or an expired one, is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import jwt

from gateway.resources import vaults
from gateway.store.base import Body, Store
from gateway.vault.keyring import KeyRing

AUDIENCE = "tether-egress"
TOKEN_TTL = 300.0
PLACEHOLDER_PREFIX = "tether-ph-"


class TokenRefused(Exception):
    pass


def mint_token(keyring: KeyRing, session_id: str, ttl: float = TOKEN_TTL, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {"sub": session_id, "aud": AUDIENCE, "iat": issued, "exp": issued + int(ttl)}
    return jwt.encode(claims, keyring.derive("egress-token"), algorithm="HS256")


def verify_token(keyring: KeyRing, token: str, session_id: str | None = None) -> str:
    """The session the token was minted for; ``TokenRefused`` if it is forged, expired or for another."""
    try:
        claims = jwt.decode(
            token,
            keyring.derive("egress-token"),
            algorithms=["HS256"],
            audience=AUDIENCE,
            options={"require": ["exp", "sub", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenRefused(f"egress token refused: {type(exc).__name__}") from None
    if session_id is not None and claims["sub"] != session_id:
        raise TokenRefused("egress token is for another session")
    return str(claims["sub"])


def placeholder(keyring: KeyRing, session_id: str, credential_id: str) -> str:
    digest = hmac.new(keyring.derive("placeholder"), f"{session_id}:{credential_id}".encode(), hashlib.sha256)
    return PLACEHOLDER_PREFIX + digest.hexdigest()[:32]


async def environment_credentials(store: Store, session: Body) -> list[Body]:
    found: list[Body] = []
    for vault_id in session.get("vault_ids") or []:
        for credential in await vaults.credentials_of(store, vault_id, include_archived=False):
            if credential["auth"]["type"] == "environment_variable":
                found.append(credential)
    return found


async def proxy_credentials(store: Store, keyring: KeyRing, session: Body) -> list[dict[str, Any]]:
    """The substitution table the proxy fetches (with the token) once per sandbox."""
    table = []
    for credential in await environment_credentials(store, session):
        auth = credential["auth"]
        table.append(
            {
                "type": "environment_variable",
                "secret_name": auth["secret_name"],
                "placeholder": placeholder(keyring, session["id"], credential["id"]),
                "secret_value": vaults.unseal(keyring, credential)["secret_value"],
                "networking": auth["networking"],
                "injection_location": auth["injection_location"],
            }
        )
    return table
