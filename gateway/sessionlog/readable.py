"""A session's log as a readable text document: what a dream reads of the sessions it is given.

One section per conversational event, in order: what the user said, what the agent said and
thought, each tool call with its input and result, and errors. Large inputs and results are cut
(a dream looks for what was learned, not for bulk output), and the whole document is bounded,
keeping its end when it must be cut (the latest state of a long session matters most).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from gateway.store.base import Body

MAX_PART_CHARS = 2000
MAX_DOCUMENT_CHARS = 400_000


def _cut(text: str, limit: int = MAX_PART_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n[… {len(text) - limit} more characters]"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, dict):
            kind = block.get("type")
            parts.append(block.get("text", "") if kind == "text" else f"[{kind}]")
    return "\n".join(parts)


def _section(event: Body) -> str | None:
    kind = event.get("type")
    if kind == "user.message":
        return f"## User\n{_cut(_text(event.get('content')), 20_000)}"
    if kind == "agent.message":
        return f"## Agent\n{_cut(_text(event.get('content')), 20_000)}"
    if kind in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
        arguments = _cut(json.dumps(event.get("input") or {}, ensure_ascii=False))
        return f"## Tool call {event.get('name')}\n{arguments}"
    if kind in ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"):
        failed = " (error)" if event.get("is_error") else ""
        return f"## Tool result{failed}\n{_cut(_text(event.get('content')))}"
    if kind == "session.error":
        error = event.get("error") or {}
        return f"## Error {error.get('type')}\n{_cut(str(error.get('message')))}"
    return None


def render(session: Body, events: Iterable[Body]) -> str:
    """The document for ``session`` (its stored body) from its events, oldest first."""
    title = session.get("title") or "(untitled)"
    header = f"# Session {session['id']}: {title}\nStarted {session.get('created_at')}.\n"
    sections = [s for s in (_section(e) for e in events) if s is not None]
    body = "\n\n".join(sections)
    if len(body) > MAX_DOCUMENT_CHARS:
        body = f"[… the start of this session is cut]\n\n{body[-MAX_DOCUMENT_CHARS:]}"
    return f"{header}\n{body}\n"
