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


def mcp_agent(
    client: anthropic.Anthropic,
    marker: str,
    server_name: str,
    url: str,
    policy: str | None = "always_allow",
    name: str = "mcp-user",
) -> Any:
    """An agent whose only tools are one MCP server's; ``policy=None`` keeps the MCP default
    (``always_ask``). ``marker`` goes in the system prompt to select a scripted-model script."""
    toolset: dict[str, Any] = {"type": "mcp_toolset", "mcp_server_name": server_name}
    if policy is not None:
        toolset["default_config"] = {"permission_policy": {"type": policy}}
    return client.beta.agents.create(
        name=name,
        model="claude-sonnet-4-6",
        system=marker,
        mcp_servers=[{"type": "url", "name": server_name, "url": url}],
        tools=[toolset],  # type: ignore[list-item]
    )
