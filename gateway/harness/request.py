"""The Messages API request for the next model call of a session, built from its log.

One place decides everything a request carries (model, output length, thinking, effort,
system prompt, tools, conversation, and what of it fits the context budget: see
``context_budget``), so what the model is sent is a pure function of the agent version, the
toolbox and the log: a restart sends the same request again.
"""

from __future__ import annotations

from typing import Any

from gateway.harness import caching
from gateway.harness import context_budget as sizing
from gateway.harness.context import build_messages
from gateway.resources import agent_settings
from gateway.sessionlog.transcript import Transcript
from gateway.store.base import Body
from gateway.tools.toolbox import Toolbox


def build_request(
    agent: Body,
    transcript: Transcript,
    toolbox: Toolbox,
    default_max_tokens: int,
    default_prompt_caching: bool = True,
) -> dict[str, Any]:
    settings = agent_settings.of(agent)
    after_seq, summary = sizing.resume_point(transcript)
    request: dict[str, Any] = {
        "model": agent["model"]["id"],
        "max_tokens": settings.max_tokens or default_max_tokens,
        "messages": build_messages(transcript, toolbox.exposed_name, after_seq, summary, toolbox.naming()),
    }
    if settings.thinking == "enabled":
        request["thinking"] = {"type": "enabled", "budget_tokens": settings.thinking_budget_tokens}
    elif settings.thinking == "adaptive":
        request["thinking"] = {"type": "adaptive"}
    effort = agent["model"].get("effort")
    if effort:
        request["output_config"] = {"effort": effort["type"]}
    if agent.get("system"):
        request["system"] = agent["system"]
    tools = toolbox.model_tools()
    if tools:
        request["tools"] = tools
    cache = settings.prompt_caching
    request = caching.prepared(request, default_prompt_caching if cache is None else cache)
    if settings.compaction is False:
        return request
    budget = sizing.budget_for(request["model"], settings.context_window_tokens, request["max_tokens"])
    return sizing.fitted(request, transcript, budget)  # old tool results cleared near the budget
