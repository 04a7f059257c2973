"""Compatibility seam: the decision an agent's own ``permission_policy`` makes.

The gateway's harness calls :func:`evaluate` today. The full engine
(:class:`policies.engine.PolicySet`, which adds deployment policy files and argument
rules) supersedes it: ``PolicySet.decide(call, policy_type)`` with no files loaded
returns exactly what ``evaluate(policy_type)`` returns, so the gateway can switch over
without changing any recorded event.
"""

from __future__ import annotations

from policies.engine import Decision, agent_decision
from policies.rules import Permission

__all__ = ["Decision", "Permission", "evaluate"]


def evaluate(policy_type: str) -> Decision:
    """The agent-policy-only decision: always_allow → allow, always_ask and auto → ask."""
    return agent_decision(policy_type)
