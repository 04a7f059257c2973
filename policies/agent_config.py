"""Resolve an agent's ``tools`` list into one tool's ``enabled`` flag and ``permission_policy``.

Pure functions over the agent body as the API returns it (``agent_toolset_20260401``
and ``mcp_toolset`` entries with ``default_config`` and per-tool ``configs``), so the
gateway's toolbox and ``tether policy dry-run`` resolve policies the same way. Missing
pieces fall back to the API's own defaults (enabled; the agent toolset
``always_allow``, MCP toolsets ``always_ask``) so hand-written agent JSON works too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.rules import ToolKind

AGENT_TOOLSET = "agent_toolset_20260401"
MCP_TOOLSET = "mcp_toolset"
DEFAULT_POLICIES = {AGENT_TOOLSET: "always_allow", MCP_TOOLSET: "always_ask"}


@dataclass(frozen=True)
class ToolConfig:
    enabled: bool
    permission_policy: str
    """``always_allow`` | ``always_ask`` | ``auto``."""


def _policy_type(config: Mapping[str, Any], fallback: str) -> str:
    policy = config.get("permission_policy")
    if isinstance(policy, Mapping):
        return str(policy.get("type") or fallback)
    if isinstance(policy, str):
        return policy
    return fallback


def toolset_config(toolset: Mapping[str, Any], tool_name: str) -> ToolConfig:
    """``tool_name``'s config within one toolset entry: its ``configs`` item, else ``default_config``."""
    default = toolset.get("default_config") or {}
    enabled = bool(default.get("enabled", True))
    policy = _policy_type(default, DEFAULT_POLICIES.get(str(toolset.get("type")), "always_ask"))
    for config in toolset.get("configs") or ():
        if config.get("name") == tool_name:
            return ToolConfig(bool(config.get("enabled", enabled)), _policy_type(config, policy))
    return ToolConfig(enabled, policy)


def tool_config(
    tools: Sequence[Mapping[str, Any]], kind: ToolKind, name: str, server: str | None = None
) -> ToolConfig | None:
    """The config governing one tool, or ``None`` when no entry of ``tools`` offers it.

    Custom tools are always ``always_allow``: they run client-side and no policy applies.
    """
    for entry in tools:
        entry_type = entry.get("type")
        if kind == "agent" and entry_type == AGENT_TOOLSET:
            return toolset_config(entry, name)
        if kind == "mcp" and entry_type == MCP_TOOLSET and entry.get("mcp_server_name") == server:
            return toolset_config(entry, name)
        if kind == "custom" and entry_type == "custom" and entry.get("name") == name:
            return ToolConfig(True, "always_allow")
    return None


def agent_tools(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The ``tools`` list of an agent body, or of the agent snapshot inside a session body."""
    if isinstance(document.get("tools"), list):
        return list(document["tools"])
    agent = document.get("agent")
    if isinstance(agent, Mapping) and isinstance(agent.get("tools"), list):
        return list(agent["tools"])
    raise ValueError("no 'tools' list found (expected an agent, or a session with its agent)")
