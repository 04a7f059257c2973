"""Re-decide a recorded session's tool uses under a candidate policy, to see what would change.

Separate from the CLI's printing so the comparison itself is testable and reusable
(e.g. by an API endpoint later). Events are dicts shaped like the SDK's
``agent.tool_use`` / ``agent.mcp_tool_use`` events; custom tool uses are skipped
because policies never govern them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.agent_config import tool_config
from policies.engine import Decision, PolicySet
from policies.rules import ToolCall, ToolKind

GOVERNED_EVENTS: dict[str, ToolKind] = {"agent.tool_use": "agent", "agent.mcp_tool_use": "mcp"}


@dataclass(frozen=True)
class Change:
    """One recorded call whose permission would differ under the new policy."""

    event_id: str | None
    call: ToolCall
    old: str
    """The recorded ``evaluated_permission`` (absent reads as ``allow``, as the harness reads it)."""
    new: Decision


@dataclass(frozen=True)
class ReplayResult:
    changes: list[Change]
    governed: int
    """How many governed (non-custom) tool uses were re-decided."""


def tool_call_from_event(event: Mapping[str, Any]) -> ToolCall | None:
    """The :class:`ToolCall` of an ``agent.tool_use``/``agent.mcp_tool_use`` event, else ``None``."""
    kind = GOVERNED_EVENTS.get(str(event.get("type")))
    if kind is None:
        return None
    arguments = event.get("input")
    return ToolCall(
        name=str(event.get("name", "")),
        kind=kind,
        server=event.get("mcp_server_name") if kind == "mcp" else None,
        input=arguments if isinstance(arguments, Mapping) else {},
    )


def decide_for_agent(policies: PolicySet, call: ToolCall, tools: Sequence[Mapping[str, Any]]) -> Decision:
    """Decide ``call`` for an agent with these ``tools``; a tool it does not enable is denied."""
    config = tool_config(tools, call.kind, call.name, call.server)
    if config is None or not config.enabled:
        return Decision(
            "deny",
            None,
            "tool not enabled for this agent",
            f"The tool {call.name!r} is not enabled for this agent.",
        )
    return policies.decide(call, config.permission_policy)


def replay(
    policies: PolicySet, events: Iterable[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
) -> ReplayResult:
    changes: list[Change] = []
    governed = 0
    for event in events:
        call = tool_call_from_event(event)
        if call is None:
            continue
        governed += 1
        old = str(event.get("evaluated_permission") or "allow")
        new = decide_for_agent(policies, call, tools)
        if new.permission != old:
            changes.append(Change(event.get("id"), call, old, new))
    return ReplayResult(changes, governed)
