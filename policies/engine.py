"""Decide ``allow``, ``ask`` or ``deny`` for one tool use.

Precedence, in full:

1. Custom tools are never governed by policies: they run client-side, so the
   decision is always ``allow`` (evaluation ``always_allow``).
2. Every policy-file rule that matches the call contributes its ``decision``, and so
   does the agent's own ``permission_policy`` for the tool: ``always_allow`` →
   allow, ``always_ask`` → ask. ``auto`` contributes nothing when a rule matches
   (the rules *are* the evaluator); with no matching rule it means ask, because
   Tether has no automatic evaluator yet.
3. The most restrictive contribution wins: **deny > ask > allow**. A file rule can
   therefore tighten an agent's policy but never loosen it: an ``allow`` rule only
   matters under ``auto``, and a ``deny`` rule always wins.
4. Reporting: if the agent's explicit ``always_*`` policy already gives the final
   permission, it is the one reported (the rules changed nothing); otherwise the
   first matching rule at the final level, in file order with files in the order
   given, is reported, in the ``auto`` evaluation form with ``reason_code`` = the
   rule id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from policies.loader import load_file
from policies.rules import (
    NetworkPolicy,
    Permission,
    PolicyError,
    PolicyFile,
    Rule,
    ToolCall,
    restrictiveness,
)

AgentPolicy = Literal["always_allow", "always_ask", "auto"]
AGENT_POLICIES: tuple[AgentPolicy, ...] = ("always_allow", "always_ask", "auto")
NO_EVALUATOR = "no_evaluator"
"""``reason_code`` of an ``auto`` ask that no rule decided."""


@dataclass(frozen=True)
class Decision:
    """A permission plus what the tool-use event records about how it was reached."""

    permission: Permission
    evaluation: dict[str, Any] | None
    """The ``evaluation`` object of the SDK's tool-use event models.

    ``None`` only when the call was refused before any policy applied (the tool is
    not enabled for the agent), as the SDK documents for that case.
    """
    rule: str
    """What produced the decision, e.g. ``policy.yaml:3 rule 'no-rm'``, for logs and the CLI."""
    message: str | None = None
    """For ``deny``, the text the model receives as the error result; for ``ask``, the rule's message."""
    matched: tuple[str, ...] = ()
    """References of every policy-file rule that matched, in precedence-tie order."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "permission": self.permission,
            "evaluation": self.evaluation,
            "rule": self.rule,
            "matched_rules": list(self.matched),
        }
        if self.message is not None:
            body["message"] = self.message
        return body


def agent_decision(permission_policy: str) -> Decision:
    """The decision the agent's own ``permission_policy`` makes when no rule intervenes."""
    if permission_policy == "always_allow":
        return Decision("allow", {"type": "always_allow"}, "agent permission_policy always_allow")
    if permission_policy == "always_ask":
        return Decision("ask", {"type": "always_ask"}, "agent permission_policy always_ask")
    if permission_policy == "auto":
        return Decision(
            "ask",
            {"type": "auto", "evaluated_permission": {"type": "ask", "reason_code": NO_EVALUATOR}},
            "agent permission_policy auto (no evaluator: ask)",
        )
    raise ValueError(
        f"unknown permission_policy {permission_policy!r} (expected {', '.join(AGENT_POLICIES)})"
    )


CUSTOM_TOOL_DECISION = Decision(
    "allow", {"type": "always_allow"}, "custom tool: runs client-side, not governed by policies"
)


def rule_decision(rule: Rule, matched: tuple[str, ...] = ()) -> Decision:
    """The ``auto``-form decision a policy-file rule produces."""
    verdict: dict[str, Any] = {"type": rule.decision}
    if rule.decision != "allow":
        verdict["reason_code"] = rule.id
    message = rule.message
    if rule.decision == "deny":
        message = f"Permission denied by policy rule {rule.id!r}" + (f": {message}" if message else ".")
    return Decision(
        rule.decision,
        {"type": "auto", "evaluated_permission": verdict},
        rule.reference,
        message,
        matched,
    )


class PolicySet:
    """The deployment's policy files, loaded once at gateway start and then read-only."""

    def __init__(self, files: Sequence[PolicyFile] = ()) -> None:
        seen: dict[str, Rule] = {}
        for policy_file in files:
            for rule in policy_file.rules:
                first = seen.get(rule.id)
                if first is not None:
                    raise PolicyError(
                        rule.source,
                        rule.line,
                        f"duplicate rule id {rule.id!r} (first defined at {first.source}:{first.line})",
                    )
                seen[rule.id] = rule
        self.files: tuple[PolicyFile, ...] = tuple(files)
        self.rules: tuple[Rule, ...] = tuple(rule for f in self.files for rule in f.rules)
        network = NetworkPolicy()
        for policy_file in self.files:
            if policy_file.network is not None:
                network = network.merged(policy_file.network)
        self.network: NetworkPolicy = network
        """All files' ``network`` sections combined, for the egress proxy."""

    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike[str]]) -> PolicySet:
        """Load files in order; raise :class:`PolicyError` (with file and line) on the first problem."""
        return cls([load_file(path) for path in paths])

    def matching(self, call: ToolCall) -> list[Rule]:
        return [rule for rule in self.rules if rule.matches(call)]

    def decide(self, call: ToolCall, permission_policy: str) -> Decision:
        """Combine the matching rules with the agent's resolved ``permission_policy`` for the tool."""
        if call.kind == "custom":
            return CUSTOM_TOOL_DECISION
        base = agent_decision(permission_policy)
        matched = self.matching(call)
        references = tuple(rule.reference for rule in matched)
        if not matched:
            return base
        level = max(restrictiveness(rule.decision) for rule in matched)
        if permission_policy != "auto":
            base_level = restrictiveness(base.permission)
            if base_level >= level:
                return Decision(base.permission, base.evaluation, base.rule, base.message, references)
        winner = next(rule for rule in matched if restrictiveness(rule.decision) == level)
        return rule_decision(winner, references)


EMPTY = PolicySet()
"""No policy files: agents' own policies only."""
