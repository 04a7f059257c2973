"""The policy model: what a tool call looks like to a rule, and what a rule is.

Kept free of YAML and of decision logic so that the loader (which builds these
objects with line numbers), the engine (which combines their verdicts) and the CLI
(which explains them in plain words) share one vocabulary.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from policies.conditions import Operator, lookup_field

Permission = Literal["allow", "ask", "deny"]
"""The three outcomes of a decision, also the values of a rule's ``decision``."""

PERMISSIONS: tuple[Permission, ...] = ("allow", "ask", "deny")
"""Ordered from least to most restrictive: the index is the restrictiveness."""

ToolKind = Literal["agent", "mcp", "custom"]
"""``agent`` is the sandbox toolset (``agent_toolset_20260401``)."""

SANDBOX_SERVER = "sandbox"
"""The server name the sandbox toolset answers to in a rule's ``servers`` list.

The sandbox is itself an MCP server (DESIGN.md section 4), so rules name it like one.
An MCP server an agent happens to call ``sandbox`` matches it too; a rule that must
tell them apart adds ``kinds``.
"""


def restrictiveness(permission: Permission) -> int:
    return PERMISSIONS.index(permission)


class PolicyError(ValueError):
    """A policy file is unreadable or malformed; names the file and, when known, the line."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class ToolCall:
    """One tool use as the policies see it: the tool's own name, never the exposed alias."""

    name: str
    kind: ToolKind
    server: str | None = None
    """The MCP server name for ``mcp`` tools; ignored otherwise."""
    input: Mapping[str, Any] = field(default_factory=dict)

    @property
    def server_label(self) -> str | None:
        """What ``servers`` globs are matched against (``sandbox`` for the sandbox toolset)."""
        if self.kind == "agent":
            return SANDBOX_SERVER
        if self.kind == "mcp":
            return self.server
        return None


@dataclass(frozen=True)
class Condition:
    """One operator applied to one input field, e.g. ``command`` ``matches`` ``\\brm\\b``."""

    field: str
    """An input key; ``a.b`` reaches into nested objects when there is no literal ``a.b`` key."""
    operator: Operator
    operand: Any
    """The operand as written in the file (for display and JSON)."""
    compiled: Any
    """The operand prepared once at load time (compiled regex, normalised path...)."""

    def holds(self, arguments: Mapping[str, Any]) -> bool:
        present, value = lookup_field(arguments, self.field)
        return self.operator.test(present, value, self.compiled)

    def describe(self) -> str:
        return f"{self.field} {self.operator.describe(self.operand)}"


@dataclass(frozen=True)
class Rule:
    """One entry of a policy file's ``rules`` list."""

    id: str
    decision: Permission
    source: str
    """The file the rule came from, as the path was given."""
    line: int
    """1-based line of the rule's first key, for ``file:line`` references."""
    tools: tuple[str, ...] | None = None
    """Globs over the tool's own name; ``None`` matches any tool."""
    servers: tuple[str, ...] | None = None
    """Globs over the MCP server name (``sandbox`` for the sandbox toolset); ``None`` matches any."""
    kinds: tuple[ToolKind, ...] | None = None
    """``agent`` and/or ``mcp``; ``None`` matches both."""
    when: tuple[Condition, ...] = ()
    message: str | None = None

    @property
    def reference(self) -> str:
        """How decisions and the CLI name this rule: ``policy.yaml:3 rule 'no-rm'``."""
        return f"{self.source}:{self.line} rule {self.id!r}"

    def matches(self, call: ToolCall) -> bool:
        """Whether the rule applies; custom tools are never governed by policies."""
        if call.kind == "custom":
            return False
        if self.kinds is not None and call.kind not in self.kinds:
            return False
        if self.tools is not None and not _any_glob(call.name, self.tools):
            return False
        if self.servers is not None:
            label = call.server_label
            if label is None or not _any_glob(label, self.servers):
                return False
        return all(condition.holds(call.input) for condition in self.when)

    def describe(self) -> str:
        """The rule in plain words, e.g. ``deny bash when command matches '\\brm\\b' — No.``"""
        text = f"{self.decision} {_either(self.tools) if self.tools else 'any tool'}"
        if self.servers:
            noun = "server" if len(self.servers) == 1 else "servers"
            text += f" on {noun} {_either(self.servers)}"
        if self.kinds:
            text += " (" + " and ".join(_KIND_WORDS[kind] for kind in self.kinds) + " only)"
        if self.when:
            text += " when " + " and ".join(condition.describe() for condition in self.when)
        if self.message:
            text += f" — {self.message}"
        return text


_KIND_WORDS: dict[ToolKind, str] = {"agent": "sandbox tools", "mcp": "MCP tools", "custom": "custom tools"}


@dataclass(frozen=True)
class NetworkPolicy:
    """Egress host lists, validated here and enforced later by the egress proxy.

    ``allowed_hosts`` is ``None`` when no file restricts egress, which is not the same
    as an empty list (nothing allowed).
    """

    allowed_hosts: tuple[str, ...] | None = None
    denied_hosts: tuple[str, ...] = ()

    def merged(self, other: NetworkPolicy) -> NetworkPolicy:
        """Combine two files' lists: allow lists and deny lists are each unioned."""
        if self.allowed_hosts is None:
            allowed = other.allowed_hosts
        elif other.allowed_hosts is None:
            allowed = self.allowed_hosts
        else:
            allowed = _union(self.allowed_hosts, other.allowed_hosts)
        return NetworkPolicy(allowed, _union(self.denied_hosts, other.denied_hosts))

    def to_json(self) -> dict[str, Any]:
        return {
            "allowed_hosts": None if self.allowed_hosts is None else list(self.allowed_hosts),
            "denied_hosts": list(self.denied_hosts),
        }


@dataclass(frozen=True)
class PolicyFile:
    """One loaded file: its rules in file order and its network section, if any."""

    path: str
    version: int
    rules: tuple[Rule, ...] = ()
    network: NetworkPolicy | None = None


def _any_glob(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _either(names: tuple[str, ...]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _union(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    return first + tuple(host for host in second if host not in first)
