"""What every example shares: the connection settings, the scripted model's part, the trail.

Examples read the gateway from ``TETHER_URL`` (default ``http://127.0.0.1:8420``) and the key
from ``TETHER_API_KEY`` (default: the key ``tether gateway`` stored in ``.tether/api_key``).

With ``ANTHROPIC_API_KEY`` set on the gateway, Claude reads each example's system prompt and
decides what to do. Without it, the gateway answers with its embedded *scripted model*, which
replays scripted turns for requests whose system prompt contains a marker; ``teach`` hands it
the turns an example needs (and does nothing when the gateway talks to a real model).
``TETHER_SCRIPTED_MODEL_URL`` points it at a separate ``tether model`` process instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

DEFAULT_URL = "http://127.0.0.1:8420"
MODEL = os.environ.get("TETHER_EXAMPLE_MODEL", "claude-sonnet-4-6")


def gateway_url() -> str:
    return os.environ.get("TETHER_URL", DEFAULT_URL).rstrip("/")


def api_key() -> str:
    """``TETHER_API_KEY``, else the key a local ``tether gateway --data-dir .tether`` generated."""
    key = os.environ.get("TETHER_API_KEY")
    if key:
        return key
    stored = Path(".tether") / "api_key"
    if stored.is_file():
        return stored.read_text().strip()
    raise SystemExit("set TETHER_API_KEY (or run from the folder holding .tether/api_key)")


def connect() -> anthropic.Anthropic:
    """The official SDK, pointed at Tether. Retries off: a retried send could deliver a message twice."""
    import anthropic  # here, so examples that only need the settings start faster

    return anthropic.Anthropic(base_url=gateway_url(), api_key=api_key(), max_retries=0, timeout=120)


def teach(client: anthropic.Anthropic, marker: str, turns: list[dict[str, Any]]) -> bool:
    """Give the scripted model ``turns`` for requests whose system prompt holds ``marker``.

    Returns False (and changes nothing) when the gateway uses a real model.
    """
    import anthropic

    override = os.environ.get("TETHER_SCRIPTED_MODEL_URL")
    target = client.with_options(base_url=override) if override else client
    path = "/_scripts" if override else "/scripted-model/_scripts"
    try:
        target.post(path, cast_to=object, body={"match": marker, "turns": turns})
    except anthropic.NotFoundError:
        return False
    return True


def describe(event: Any) -> str:
    """One line of trail for a session event."""
    kind = event.type
    if kind in ("agent.message", "user.message"):
        text = " ".join(b.text for b in event.content if getattr(b, "type", "") == "text")
        return f"{kind}: {text}"
    if kind in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
        return f"{kind}: {event.name} {json.dumps(event.input)}"
    if kind in ("agent.tool_result", "agent.mcp_tool_result"):
        text = " ".join(getattr(b, "text", "") for b in event.content or [])
        return f"{kind}{' ERROR' if event.is_error else ''}: {text.strip()[:300]}"
    if kind == "session.status_idle":
        return f"{kind}: {event.stop_reason.type}"
    if kind == "session.error":
        return f"{kind}: {getattr(event, 'error', '')}"
    return kind


def is_noise(event: Any) -> bool:
    """Spans (model request start and end) and the running status: left out of printed trails."""
    return event.type.startswith("span.") or event.type == "session.status_running"


def turn(client: anthropic.Anthropic, session_id: str, events: Iterable[dict[str, Any]]) -> Iterator[Any]:
    """Send ``events`` and yield what the session does until it idles (the idle event last).

    The stream is opened before sending: it carries only events that come after it opened.
    """
    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(session_id, events=list(events))  # type: ignore[arg-type]
        for event in stream:
            yield event
            if event.type in ("session.status_idle", "session.status_terminated"):
                return


def user_message(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}
