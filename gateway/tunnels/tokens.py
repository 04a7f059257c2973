"""Tunnel connector tokens: random, looked up by SHA-256, kept sealed for ``reveal_token``.

The API must be able to reveal the current token, so a copy is stored; it is sealed by
the gateway's key ring when one is configured (``KeyRing`` satisfies ``Sealer``), with the
tunnel id as associated data so a sealed token cannot be moved to another tunnel.
Authentication only ever needs the digest.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Protocol

from gateway import ids

TOKEN_PREFIX = "tether_tnl_"
TOKEN_ID_PREFIX = "tnltok"
_PLAIN = "plain:"


class Sealer(Protocol):
    def encrypt(self, plaintext: bytes, record_id: str) -> str: ...

    def decrypt(self, token: str, record_id: str) -> bytes: ...


class PlainSealer:
    """No key configured: the reveal copy is stored as is (the digest still does the auth)."""

    def encrypt(self, plaintext: bytes, record_id: str) -> str:
        return _PLAIN + plaintext.decode()

    def decrypt(self, token: str, record_id: str) -> bytes:
        if not token.startswith(_PLAIN):
            raise ValueError("sealed token needs the key ring that sealed it")
        return token[len(_PLAIN) :].encode()


def new_token() -> str:
    """~256 bits of randomness behind a recognisable prefix (secret scanners can match it)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_token_id() -> str:
    return ids.new_id(TOKEN_ID_PREFIX)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
