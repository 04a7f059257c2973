"""Drive sessions through the SDK the way a client would."""

from __future__ import annotations

from typing import Any

import anthropic
from anthropic.types.beta.sessions import BetaManagedAgentsSessionEvent, BetaManagedAgentsStreamSessionEvents
from pydantic import TypeAdapter

SESSION_EVENT: TypeAdapter[Any] = TypeAdapter(BetaManagedAgentsSessionEvent)
STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(BetaManagedAgentsStreamSessionEvents)


def send_and_stream(
    client: anthropic.Anthropic,
    session_id: str,
    events: list[dict[str, Any]],
    until: str = "session.status_idle",
) -> list[Any]:
    """Open the stream first (it only carries new events), send, and collect until ``until``."""
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(session_id, events=events)  # type: ignore[arg-type]
        for event in stream:
            seen.append(event)
            if event.type == until:
                break
    return seen


def user_message(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def strictly_valid(raw_events: list[dict[str, Any]]) -> list[Any]:
    """Validate raw JSON events against the SDK's models (strict pydantic validation, not construct)."""
    return [SESSION_EVENT.validate_python(raw) for raw in raw_events]
