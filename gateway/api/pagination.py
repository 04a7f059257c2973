"""Cursor pagination as the SDK's ``PageCursor`` expects: ``{"data": [...], "next_page": ...}``."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request

from gateway.errors import InvalidRequest
from gateway.ids import timestamp
from gateway.store.base import Page

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_INT = 2**31 - 1
_DIGITS = re.compile(r"^[0-9]{1,10}$", re.ASCII)


def encode_cursor(position: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(position).encode()).decode().rstrip("=")


def decode_cursor(token: str) -> int:
    raw = token.removeprefix("page_")
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except ValueError:
        decoded = ""
    if not _DIGITS.match(decoded):
        raise InvalidRequest("page: not a cursor returned by this API")
    return int(decoded)


def page_params(request: Request) -> tuple[int | None, int]:
    """(cursor, limit) from ``?page=`` and ``?limit=``."""
    token = request.query_params.get("page")
    cursor = decode_cursor(token) if token else None
    return cursor, limit_param(request)


def limit_param(request: Request, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    return int_param(request, "limit", maximum=maximum) or default


def int_param(request: Request, name: str, minimum: int = 1, maximum: int = MAX_INT) -> int | None:
    """A bounded integer query parameter (ASCII digits only), or None when absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not _DIGITS.match(raw) or not minimum <= int(raw) <= maximum:
        raise InvalidRequest(f"{name}: must be an integer between {minimum} and {maximum}")
    return int(raw)


def bool_param(request: Request, name: str, default: bool = False) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise InvalidRequest(f"{name}: must be true or false")


def page_body(page: Page, render: Any = None) -> dict[str, Any]:
    items = [render(item) for item in page.items] if render else page.items
    return {
        "data": items,
        "next_page": encode_cursor(page.next_cursor) if page.next_cursor is not None else None,
    }


def time_param(request: Request, name: str) -> str | None:
    """An RFC 3339 query timestamp, normalised to the stored form so strings compare in order."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return timestamp(moment)
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{name}: not an RFC 3339 timestamp") from None


def created_bounds(request: Request) -> tuple[str | None, str | None]:
    """Inclusive ``(from, to)`` from ``created_at[gte|gt|lte|lt]``: stored times have microsecond
    precision, so a strict bound is the inclusive one a microsecond inside it."""
    lower = [time_param(request, "created_at[gte]"), _shifted(time_param(request, "created_at[gt]"), 1)]
    upper = [time_param(request, "created_at[lte]"), _shifted(time_param(request, "created_at[lt]"), -1)]
    return max((b for b in lower if b), default=None), min((b for b in upper if b), default=None)


def _shifted(stamp: str | None, microseconds: int) -> str | None:
    if stamp is None:
        return None
    return timestamp(datetime.fromisoformat(stamp) + timedelta(microseconds=microseconds))
