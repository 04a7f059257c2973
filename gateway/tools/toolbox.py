"""The tools one agent offers the model, and where each one is routed.

Built from the agent's resolved ``tools`` plus the tool listings of its MCP servers
(the sandbox included). Names the model sees match ``^[a-zA-Z0-9_-]{1,64}$`` and
are namespaced ``server__tool`` only where they would collide.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mcp.types as mcp_types

from gateway.sessionlog.transcript import TOOL_USE_KINDS, ToolKind
from gateway.store.base import Body
from policies.agent_config import toolset_config

AGENT_TOOLSET = "agent_toolset_20260401"
SANDBOX_TOOLS = ("bash", "read", "write", "edit", "glob", "grep")
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


@dataclass(frozen=True)
class ToolSpec:
    exposed: str
    """The name the model sees and calls."""
    kind: ToolKind
    name: str
    """The tool's own name on its server (or the custom tool's name)."""
    server: str | None
    description: str
    input_schema: dict[str, Any]
    policy: str
    """``always_allow`` | ``always_ask`` | ``auto`` (custom tools: ``always_allow``)."""
    safe_to_retry: bool = False
    """The server declares the tool read-only or idempotent, so a restart may run it again."""


def _safe_to_retry(tool: mcp_types.Tool) -> bool:
    hints = tool.annotations
    return hints is not None and bool(hints.read_only_hint or hints.idempotent_hint)


def safe_name(raw: str) -> str:
    name = _UNSAFE.sub("_", raw) or "tool"
    if len(name) > 64:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = name[:55] + "_" + digest
    return name


def namespaced(server: str, tool: str) -> str:
    return safe_name(f"{server}__{tool}")


def _policy(toolset: Body, tool_name: str) -> tuple[bool, str]:
    config = toolset_config(toolset, tool_name)
    return config.enabled, config.permission_policy


class Toolbox:
    def __init__(self, specs: Sequence[ToolSpec], unavailable: Mapping[str, str] | None = None) -> None:
        self.specs = {spec.exposed: spec for spec in specs}
        self._by_origin = {(spec.kind, spec.server, spec.name): spec.exposed for spec in specs}
        self.unavailable = dict(unavailable or {})
        """MCP server name -> why its tools are missing this turn."""

    def model_tools(self) -> list[dict[str, Any]]:
        return [
            {"name": spec.exposed, "description": spec.description, "input_schema": spec.input_schema}
            for spec in self.specs.values()
        ]

    def lookup(self, exposed: str) -> ToolSpec | None:
        return self.specs.get(exposed)

    def naming(self) -> dict[tuple[ToolKind, str | None, str], str]:
        """Everything ``exposed_name`` depends on besides the use itself: equal maps name every
        logged tool use the same way (a built conversation can be reused)."""
        return self._by_origin

    def exposed_name(self, use: Body) -> str:
        """The model-facing name for a logged tool use, even if the tool is gone now."""
        kind: ToolKind = TOOL_USE_KINDS.get(use["type"], "custom")
        server = use.get("mcp_server_name")
        found = self._by_origin.get((kind, server, use["name"]))
        if found:
            return found
        return namespaced(server, use["name"]) if server else safe_name(use["name"])


def build_toolbox(
    agent: Body,
    sandbox_tools: Sequence[mcp_types.Tool],
    server_tools: Mapping[str, Sequence[mcp_types.Tool]],
    unavailable: Mapping[str, str] | None = None,
) -> Toolbox:
    """``server_tools`` maps each reachable MCP server name to its tool listing."""
    specs: list[ToolSpec] = []
    for toolset in agent["tools"]:
        if toolset["type"] == AGENT_TOOLSET:
            for tool in sandbox_tools:
                enabled, policy = _policy(toolset, tool.name)
                if enabled and tool.name in SANDBOX_TOOLS:
                    specs.append(
                        ToolSpec(
                            tool.name,
                            "agent",
                            tool.name,
                            None,
                            tool.description or "",
                            tool.input_schema,
                            policy,
                            _safe_to_retry(tool),
                        )
                    )
        elif toolset["type"] == "mcp_toolset":
            server = toolset["mcp_server_name"]
            for tool in server_tools.get(server, ()):
                enabled, policy = _policy(toolset, tool.name)
                if enabled:
                    specs.append(
                        ToolSpec(
                            safe_name(tool.name),
                            "mcp",
                            tool.name,
                            server,
                            tool.description or "",
                            tool.input_schema,
                            policy,
                            _safe_to_retry(tool),
                        )
                    )
        elif toolset["type"] == "custom":
            specs.append(
                ToolSpec(
                    toolset["name"],
                    "custom",
                    toolset["name"],
                    None,
                    toolset["description"],
                    toolset["input_schema"],
                    "always_allow",
                )
            )
    counts = Counter(spec.exposed for spec in specs)
    resolved = []
    for spec in specs:
        if counts[spec.exposed] > 1 and spec.server is not None:
            spec = dataclasses.replace(spec, exposed=namespaced(spec.server, spec.name))
        resolved.append(spec)
    return Toolbox(resolved, unavailable)
