"""Webhook signatures in the Standard Webhooks format (https://www.standardwebhooks.com).

Each delivery carries ``webhook-id`` (the session event id: stable across retries, so a
receiver can drop duplicates), ``webhook-timestamp`` (Unix seconds of this attempt) and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over ``id.timestamp.body`` with the
endpoint's secret). Signing the id along with the timestamp and body is what the standard
specifies, and it means receivers can use any Standard Webhooks library (``standardwebhooks``,
Svix) as well as ``verify`` below; the timestamp bounds replays to ``tolerance`` seconds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300
"""Seconds a delivery's timestamp may differ from the receiver's clock."""


class WebhookVerificationError(Exception):
    """The request is not a genuine, fresh delivery for this secret."""


def generate_secret() -> str:
    """A new endpoint secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise WebhookVerificationError("the secret is not a whsec_ base64 secret") from None


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one delivery attempt."""
    material = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), material, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    moment = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(moment),
        "webhook-signature": sign(secret, message_id, moment, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Any:
    """Check a received delivery and return its decoded JSON payload.

    ``headers`` may use any case. Several space-separated signatures are accepted (a
    sender rotating secrets signs with both). Raises ``WebhookVerificationError``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    presented = lowered.get("webhook-signature")
    if not message_id or not stamp or not presented:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        moment = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - moment) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (replayed or clock skew)")
    raw = body.encode() if isinstance(body, str) else body
    expected = sign(secret, message_id, moment, raw).encode()
    for candidate in presented.split():
        version, _, _ = candidate.partition(",")
        if version == SIGNATURE_VERSION and hmac.compare_digest(candidate.encode(), expected):
            return json.loads(raw)
    raise WebhookVerificationError("no signature matches")
