"""Resource identifiers with the prefixes the official SDK uses."""

from __future__ import annotations

import secrets
import string
from datetime import UTC, datetime

_ALPHABET = string.ascii_letters + string.digits

AGENT = "agent"
ENVIRONMENT = "env"
SESSION = "sesn"
EVENT = "sevt"
FILE = "file"


def new_id(prefix: str) -> str:
    """``prefix_`` plus 24 random base62 characters (~143 bits)."""
    # One read of the OS's randomness per id, not one per character (ids are made per event).
    # Bytes of 248 and up are dropped so each character stays uniform (248 = 4 * 62).
    chars: list[str] = []
    while len(chars) < 24:
        chars += [_ALPHABET[byte % 62] for byte in secrets.token_bytes(32) if byte < 248]
    return prefix + "_" + "".join(chars[:24])


def now() -> datetime:
    return datetime.now(UTC)


def timestamp(moment: datetime | None = None) -> str:
    """RFC 3339 with microseconds and a ``Z`` suffix, as the API returns."""
    return (moment or now()).astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
