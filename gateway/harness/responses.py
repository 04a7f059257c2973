"""A model response turned into log events: one per thinking block, run of text and tool use.

Each tool use carries the permission the policies decided before anything runs, and the rule
behind it, so the log says why a call ran or did not, and the model's own id for it.

Each ``agent.thinking`` event keeps its block exactly as the model sent it (``tether_block``):
the API wants thinking sent back unchanged, signature and all. Like ``tether_policy`` it is
part of the logged event, so ``GET /events`` and the stream show it too (the hosted API shows
no thinking content on this event); the hash chain covers the body exactly as served.
"""

from __future__ import annotations

from typing import Any

from gateway.sessionlog import events as ev
from gateway.store.base import Body
from gateway.tools.toolbox import Toolbox
from policies.engine import PolicySet
from policies.rules import ToolCall as PolicyCall

POLICY_FIELD = "tether_policy"
"""Extra field on tool-use events: the rule that decided, so a reviewer can see why a call ran."""


def model_usage(usage: dict[str, int] | None) -> Body:
    """The SDK's ``BetaManagedAgentsSpanModelUsage`` (zeros for what is not known)."""
    usage = usage or {}
    return {
        "input_tokens": usage.get("input_tokens", 0),
        "output_tokens": usage.get("output_tokens", 0),
        "cache_read_input_tokens": usage.get("cache_read_input_tokens", 0),
        "cache_creation_input_tokens": usage.get("cache_creation_input_tokens", 0),
    }


def request_end(start_id: str, usage: dict[str, int] | None, is_error: bool) -> Body:
    return ev.new_event(
        "span.model_request_end",
        model_request_start_id=start_id,
        is_error=is_error,
        model_usage=model_usage(usage),
    )


def interrupted_request_end(start_id: str) -> Body:
    return request_end(start_id, None, is_error=True)


def response_events(content: list[dict[str, Any]], toolbox: Toolbox, policies: PolicySet) -> list[Body]:
    """One event per thinking block, per run of text, and per tool use, in order."""
    produced: list[Body] = []
    for block in content:
        kind = block["type"]
        if kind in ("thinking", "redacted_thinking"):
            produced.append(ev.new_event("agent.thinking", **{ev.THINKING_BLOCK_FIELD: block}))
        elif kind == "text":
            if produced and produced[-1]["type"] == "agent.message":
                produced[-1]["content"].append({"type": "text", "text": block["text"]})
            else:
                produced.append(
                    ev.new_event("agent.message", content=[{"type": "text", "text": block["text"]}])
                )
        elif kind == "tool_use":
            produced.append(tool_use_event(block, toolbox, policies))
    return produced


def tool_use_event(block: dict[str, Any], toolbox: Toolbox, policies: PolicySet) -> Body:
    """The intent, with the permission decided before anything runs and the rule behind it."""
    event = _tool_use_event(block, toolbox, policies)
    if isinstance(block.get("id"), str):
        event[ev.MODEL_ID_FIELD] = block["id"]
    return event


def _tool_use_event(block: dict[str, Any], toolbox: Toolbox, policies: PolicySet) -> Body:
    spec = toolbox.lookup(block["name"])
    raw_input = block.get("input")
    arguments: dict[str, Any] = raw_input if isinstance(raw_input, dict) else {}
    if spec is None:
        return ev.new_event(
            "agent.tool_use",
            name=block["name"],
            input=arguments,
            evaluated_permission="deny",
            evaluation=None,
            **{
                POLICY_FIELD: {"rule": "unknown tool", "message": f"Tool {block['name']!r} is not available."}
            },
        )
    if spec.kind == "custom":
        return ev.new_event("agent.custom_tool_use", name=spec.name, input=arguments)
    decision = policies.decide(PolicyCall(spec.name, spec.kind, spec.server, arguments), spec.policy)
    record: dict[str, Any] = {"rule": decision.rule, "matched": list(decision.matched)}
    if decision.message:
        record["message"] = decision.message
    fields: dict[str, Any] = {
        "name": spec.name,
        "input": arguments,
        "evaluated_permission": decision.permission,
        "evaluation": decision.evaluation,
        POLICY_FIELD: record,
    }
    if spec.kind == "mcp":
        return ev.new_event("agent.mcp_tool_use", mcp_server_name=spec.server, **fields)
    return ev.new_event("agent.tool_use", **fields)
