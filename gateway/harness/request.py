"""The Messages API request for the next model call of a session, built from its log.

One place decides everything a request carries (model, output length, system prompt, tools,
conversation), so what the model is sent is a pure function of the agent version, the
toolbox and the log: a restart sends the same request again.
"""

from __future__ import annotations

from typing import Any

from gateway.harness.context import build_messages
from gateway.harness.transcript import Transcript
from gateway.resources import agent_settings
from gateway.store.base import Body
from gateway.tools.toolbox import Toolbox


def build_request(
    agent: Body, transcript: Transcript, toolbox: Toolbox, default_max_tokens: int
) -> dict[str, Any]:
    settings = agent_settings.of(agent)
    request: dict[str, Any] = {
        "model": agent["model"]["id"],
        "max_tokens": settings.max_tokens or default_max_tokens,
        "messages": build_messages(transcript, toolbox.exposed_name),
    }
    if agent.get("system"):
        request["system"] = agent["system"]
    tools = toolbox.model_tools()
    if tools:
        request["tools"] = tools
    return request
