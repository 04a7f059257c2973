"""Turn an agent's ``permission_policy`` into the decision recorded on a tool-use event.

This is the seam the full policy engine (deployment policy files, argument rules)
plugs into; today it applies the agent's own configuration only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Permission = Literal["allow", "ask", "deny"]


@dataclass(frozen=True)
class Decision:
    permission: Permission
    evaluation: dict[str, Any]
    """The ``evaluation`` object of the SDK's tool-use event models."""


def evaluate(policy_type: str) -> Decision:
    if policy_type == "always_allow":
        return Decision("allow", {"type": "always_allow"})
    if policy_type == "always_ask":
        return Decision("ask", {"type": "always_ask"})
    # ``auto`` needs an evaluator Tether does not have yet: ask a human rather than guess.
    return Decision(
        "ask", {"type": "auto", "evaluated_permission": {"type": "ask", "reason_code": "no_evaluator"}}
    )
