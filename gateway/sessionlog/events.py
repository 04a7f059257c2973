"""Constructors for the events the harness appends, shaped like the SDK's event models."""

from __future__ import annotations

from typing import Any

from gateway import ids
from gateway.store.base import Body

THINKING_BLOCK_FIELD = "tether_block"
"""Extra field on ``agent.thinking``: the ``thinking`` or ``redacted_thinking`` block exactly as
the model sent it (text and signature, or ``data``), so it can be sent back unchanged."""

MODEL_ID_FIELD = "tether_model_id"
"""Extra field on the ``*_tool_use`` events: the model's own ``toolu_`` id, used on the wire for
the ``tool_use`` block and its ``tool_result`` (the log links results by event id)."""


def new_event(event_type: str, **fields: Any) -> Body:
    return {"id": ids.new_id(ids.EVENT), "type": event_type, "processed_at": ids.timestamp(), **fields}


def status_idle(stop_reason: str, event_ids: list[str] | None = None) -> Body:
    reason: dict[str, Any] = {"type": stop_reason}
    if stop_reason == "requires_action":
        reason["event_ids"] = event_ids or []
    return new_event("session.status_idle", stop_reason=reason)


def session_error(error_type: str, message: str, retry_status: str = "terminal", **extra: Any) -> Body:
    error = {"type": error_type, "message": message, "retry_status": {"type": retry_status}, **extra}
    return new_event("session.error", error=error)


def text_result(kind_type: str, link_field: str, use_id: str, text: str, is_error: bool) -> Body:
    return new_event(
        kind_type, **{link_field: use_id}, content=[{"type": "text", "text": text}], is_error=is_error
    )


ADMIN_LOG = "admin_log"
"""The admin audit log's name among the logs (``gateway.api.admin_audit``); sessions are ``sesn_…``."""
