"""Tool permission policies: decide ``allow``, ``ask`` or ``deny`` for each tool use.

See ``policies/README.md`` for the policy file format and the precedence rules.
Modules: :mod:`~policies.rules` (the model), :mod:`~policies.conditions` (operators),
:mod:`~policies.loader` (YAML with line numbers), :mod:`~policies.engine` (decisions),
:mod:`~policies.agent_config` (an agent's per-tool ``permission_policy``),
:mod:`~policies.replay` and :mod:`~policies.cli` (``tether policy check``/``dry-run``).
"""

from policies.agent_config import ToolConfig, tool_config, toolset_config
from policies.engine import Decision, PolicySet, agent_decision
from policies.rules import NetworkPolicy, PolicyError, Rule, ToolCall

__all__ = [
    "Decision",
    "NetworkPolicy",
    "PolicyError",
    "PolicySet",
    "Rule",
    "ToolCall",
    "ToolConfig",
    "agent_decision",
    "tool_config",
    "toolset_config",
]
