"""Reading a session's events from a gateway, and describing each one in a line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

from gateway.commands.client import raw
from gateway.commands.output import clock

EVENT_PAGE = 1000


def session_body(client: anthropic.Anthropic, session_id: str) -> dict[str, Any]:
    result: dict[str, Any] = raw(client.beta.sessions.with_raw_response.retrieve(session_id))
    return result


def all_events(client: anthropic.Anthropic, session_id: str) -> Iterator[dict[str, Any]]:
    """Every event of the session, oldest first, page by page (raw wire JSON)."""
    page: str | None = None
    while True:
        query: dict[str, Any] = {"limit": EVENT_PAGE}
        if page:
            query["page"] = page
        body = raw(client.beta.sessions.events.with_raw_response.list(session_id, **query))
        yield from body["data"]
        page = body.get("next_page")
        if not page:
            return


def last_idle(client: anthropic.Anthropic, session_id: str) -> dict[str, Any] | None:
    """The latest ``session.status_idle`` event: its ``stop_reason`` says why the session waits."""
    body = raw(
        client.beta.sessions.events.with_raw_response.list(
            session_id, limit=1, order="desc", types=["session.status_idle"]
        )
    )
    data = body.get("data") or []
    return data[0] if data else None


def pending_confirmations(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool uses that wait for ``user.tool_confirmation``: those the last idle event names as
    blocking, less any answered or closed since."""
    blocking: list[str] = []
    for event in events:
        if event.get("type") == "session.status_idle":
            reason = event.get("stop_reason") or {}
            blocking = list(reason.get("event_ids") or []) if reason.get("type") == "requires_action" else []
    answered = {
        e.get("tool_use_id") or e.get("mcp_tool_use_id") or e.get("custom_tool_use_id")
        for e in events
        if e.get("type")
        in ("user.tool_confirmation", "agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result")
    }
    uses = {e["id"]: e for e in events if e.get("type") in ("agent.tool_use", "agent.mcp_tool_use")}
    return [uses[i] for i in blocking if i in uses and i not in answered]


def describe_event(event: dict[str, Any]) -> str:
    """One line per event: time, type, and what matters about it."""
    kind = event.get("type", "?")
    detail = ""
    if kind in ("user.message", "agent.message", "system.message"):
        detail = _text(event.get("content"))
    elif kind in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
        server = f"{event['mcp_server_name']}/" if event.get("mcp_server_name") else ""
        permission = event.get("evaluated_permission")
        rule = (event.get("tether_policy") or {}).get("rule")
        detail = f"{server}{event.get('name')} {json.dumps(event.get('input') or {}, ensure_ascii=False)}"
        if permission:
            detail += f"  [{permission}{' by ' + rule if rule else ''}]"
    elif kind in ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"):
        link = event.get("tool_use_id") or event.get("mcp_tool_use_id") or event.get("custom_tool_use_id")
        detail = f"{'ERROR ' if event.get('is_error') else ''}for {link}: {_text(event.get('content'))}"
    elif kind == "user.tool_confirmation":
        detail = (
            f"{event.get('result')} {event.get('tool_use_id')} {event.get('deny_message') or ''}".rstrip()
        )
    elif kind == "session.status_idle":
        reason = event.get("stop_reason") or {}
        detail = reason.get("type", "") + (f" {reason['event_ids']}" if reason.get("event_ids") else "")
    elif kind == "session.error":
        error = event.get("error") or {}
        retry = (error.get("retry_status") or {}).get("type")
        detail = f"{error.get('type')} ({retry}): {error.get('message')}"
    elif kind == "span.model_request_end":
        usage = event.get("model_usage") or {}
        detail = (
            f"{'ERROR ' if event.get('is_error') else ''}"
            f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"
        )
    line = f"{clock(event.get('processed_at'))}  {kind:<26} {detail}".rstrip()
    return line if len(line) <= 300 else line[:299] + "…"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.replace("\n", " ⏎ ")
    if isinstance(content, list):
        parts = [b.get("text", f"[{b.get('type')}]") for b in content if isinstance(b, dict)]
        return " ".join(parts).replace("\n", " ⏎ ")
    return ""
