"""Parse policy files into :mod:`policies.rules` objects, with a line number on every error.

The YAML is composed into a node tree (``yaml.compose``) rather than loaded, so each
key and value still carries its position: an operator with a typo, a bad regex or a
duplicated rule id is reported as ``file:line: what is wrong``, which is what an
operator needs at gateway start. Everything not recognised is an error; a policy
that silently ignores a misspelt key would fail open.

The format (``policies/README.md`` has the full reference)::

    version: 1                      # required, the only version
    rules:                          # evaluated in file order
      - id: no-recursive-delete     # required, unique across files; the event's reason_code
        tools: ["bash"]             # globs over the tool's own name; omitted = any
        servers: ["github"]         # globs over the MCP server ("sandbox" = the toolset); omitted = any
        kinds: ["agent", "mcp"]     # optional; agent = the sandbox toolset
        when:                       # all must hold; one input field each (dotted = nested)
          command: {matches: '\\brm\\s+-rf\\b'}
        decision: deny              # allow | ask | deny
        message: "Recursive deletes are not allowed here."
    network:                        # validated and exposed for the egress proxy
      allowed_hosts: ["pypi.org", "*.github.com"]
      denied_hosts: ["169.254.169.254"]

Operators: ``matches``, ``not_matches`` (regex search), ``equals``, ``in`` (list),
``under``, ``not_under`` (normalised path prefix), ``exists`` (bool); see
:mod:`policies.conditions` for their semantics.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from policies.conditions import OPERATORS
from policies.rules import (
    PERMISSIONS,
    Condition,
    NetworkPolicy,
    Permission,
    PolicyError,
    PolicyFile,
    Rule,
    ToolKind,
)

VERSION = 1
"""The only ``version`` this loader reads."""

RULE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
"""Rule ids become ``reason_code`` values on events: keep them short and registry-like."""

_HOST = re.compile(r"^[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*\.?$")
_TOP_KEYS = ("version", "rules", "network")
_RULE_KEYS = ("id", "decision", "tools", "servers", "kinds", "when", "message")
_NETWORK_KEYS = ("allowed_hosts", "denied_hosts")
_RULE_KINDS: tuple[ToolKind, ...] = ("agent", "mcp")

Entries = dict[str, tuple[ScalarNode, Node]]


def load_file(path: str | os.PathLike[str]) -> PolicyFile:
    """Read and parse one policy file; the path is kept as given for ``file:line`` references."""
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(source, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PolicyError(source, None, "cannot read: not UTF-8 text") from None
    return parse_policy(text, source)


def parse_policy(text: str, source: str) -> PolicyFile:
    """Parse policy text; ``source`` names it in errors and rule references.

    An empty document is a valid file without rules.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "unparseable"
        raise PolicyError(source, line, f"invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(source, None, f"invalid YAML: {exc}") from None
    if root is None:
        return PolicyFile(source, VERSION)
    return _Parser(source).policy_file(root)


class _Parser:
    """Walks one composed document; every check fails with the offending node's line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._constructor = SafeConstructor()
        self._rule_lines: dict[str, int] = {}

    # -- generic helpers ------------------------------------------------------------

    def fail(self, node: Node, message: str) -> NoReturn:
        raise PolicyError(self.source, node.start_mark.line + 1, message)

    def value(self, node: Node) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            self.fail(node, f"unreadable value: {exc}")

    def describe(self, node: Node) -> str:
        if isinstance(node, MappingNode):
            return "a mapping"
        if isinstance(node, SequenceNode):
            return "a list"
        value = self.value(node)
        if value is None:
            return "nothing (null)"
        if isinstance(value, bool):
            return f"{str(value).lower()} (a boolean)"
        if isinstance(value, (int, float)):
            return f"{value} (a number)"
        return f"{value!r}"

    def mapping(
        self, node: Node, where: str, keys: tuple[str, ...], required: tuple[str, ...] = ()
    ) -> Entries:
        if not isinstance(node, MappingNode):
            self.fail(node, f"{where} must be a mapping, got {self.describe(node)}")
        entries: Entries = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.fail(key_node, f"{where}: keys must be plain names, got {self.describe(key_node)}")
            # The text as written: input fields like ``on`` or ``yes`` must not turn into booleans.
            key = key_node.value
            if key in entries:
                self.fail(key_node, f"{where}: duplicate key {key!r}")
            if keys and key not in keys:
                self.fail(key_node, f"{where}: unknown key {key!r} (expected {_listing(keys)})")
            entries[key] = (key_node, value_node)
        for key in required:
            if key not in entries:
                self.fail(node, f"{where}: missing required key {key!r}")
        return entries

    def string(self, node: Node, where: str) -> str:
        value = self.value(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, str) or not value:
            self.fail(node, f"{where} must be a non-empty string, got {self.describe(node)}")
        return value

    def strings(self, node: Node, where: str) -> tuple[str, ...]:
        """A list of non-empty strings; a single string is accepted as a one-item list."""
        if isinstance(node, ScalarNode):
            return (self.string(node, where),)
        if not isinstance(node, SequenceNode):
            self.fail(node, f"{where} must be a list of strings, got {self.describe(node)}")
        if not node.value:
            self.fail(node, f"{where} must not be empty (omit the key to match anything)")
        return tuple(self.string(item, f"{where}[{i}]") for i, item in enumerate(node.value))

    # -- sections -------------------------------------------------------------------

    def policy_file(self, root: Node) -> PolicyFile:
        entries = self.mapping(root, "the file", _TOP_KEYS, required=("version",))
        version_node = entries["version"][1]
        version = self.value(version_node)
        if isinstance(version, bool) or version != VERSION:
            self.fail(version_node, f"unsupported version {self.describe(version_node)} (expected {VERSION})")
        rules: tuple[Rule, ...] = ()
        if "rules" in entries:
            rules = self.rules(entries["rules"][1])
        network = self.network(entries["network"][1]) if "network" in entries else None
        return PolicyFile(self.source, VERSION, rules, network)

    def rules(self, node: Node) -> tuple[Rule, ...]:
        if isinstance(node, ScalarNode) and self.value(node) is None:
            return ()
        if not isinstance(node, SequenceNode):
            self.fail(node, f"rules must be a list, got {self.describe(node)}")
        return tuple(self.rule(item, f"rules[{index}]") for index, item in enumerate(node.value))

    def rule(self, node: Node, where: str) -> Rule:
        entries = self.mapping(node, where, _RULE_KEYS, required=("id", "decision"))
        id_node = entries["id"][1]
        rule_id = self.string(id_node, f"{where}.id")
        if not RULE_ID.match(rule_id):
            self.fail(
                id_node,
                f"{where}.id {rule_id!r}: use letters, digits, '-', '_', '.' or ':' (at most 128)",
            )
        if rule_id in self._rule_lines:
            self.fail(
                id_node, f"duplicate rule id {rule_id!r} (first defined at line {self._rule_lines[rule_id]})"
            )
        line = node.start_mark.line + 1
        self._rule_lines[rule_id] = line
        where = f"rule {rule_id!r}"

        decision_node = entries["decision"][1]
        decision = self.value(decision_node) if isinstance(decision_node, ScalarNode) else None
        if decision not in PERMISSIONS:
            self.fail(
                decision_node,
                f"{where}: unknown decision {self.describe(decision_node)} (expected {_listing(PERMISSIONS)})",
            )
        permission: Permission = decision

        def optional(key: str) -> tuple[str, ...] | None:
            return self.strings(entries[key][1], f"{where} {key}") if key in entries else None

        kinds = self.kinds(entries["kinds"][1], f"{where} kinds") if "kinds" in entries else None
        message = self.string(entries["message"][1], f"{where} message") if "message" in entries else None
        when = self.when(entries["when"][1], f"{where} when") if "when" in entries else ()
        return Rule(
            id=rule_id,
            decision=permission,
            source=self.source,
            line=line,
            tools=optional("tools"),
            servers=optional("servers"),
            kinds=kinds,
            when=when,
            message=message,
        )

    def kinds(self, node: Node, where: str) -> tuple[ToolKind, ...]:
        kinds: list[ToolKind] = []
        items = node.value if isinstance(node, SequenceNode) else [node]
        for name, item in zip(self.strings(node, where), items, strict=True):
            kind = next((k for k in _RULE_KINDS if k == name), None)
            if kind is None:
                self.fail(
                    item,
                    f"{where}: unknown kind {name!r} (expected {_listing(_RULE_KINDS)};"
                    " custom tools are never governed by policies)",
                )
            kinds.append(kind)
        return tuple(kinds)

    def when(self, node: Node, where: str) -> tuple[Condition, ...]:
        conditions: list[Condition] = []
        for field, (key_node, ops_node) in self.mapping(node, where, ()).items():
            if not field:
                self.fail(key_node, f"{where}: field names must not be empty")
            operators = self.mapping(ops_node, f"{where}.{field}", ())
            if not operators:
                self.fail(
                    ops_node, f"{where}.{field}: give at least one operator ({_listing(tuple(OPERATORS))})"
                )
            for name, (op_key, operand_node) in operators.items():
                operator = OPERATORS.get(name)
                if operator is None:
                    self.fail(
                        op_key,
                        f"{where}.{field}: unknown operator {name!r} (expected {_listing(tuple(OPERATORS))})",
                    )
                operand = self.value(operand_node)
                try:
                    compiled = operator.prepare(operand)
                except ValueError as exc:
                    self.fail(operand_node, f"{where}.{field}.{name}: {exc}")
                conditions.append(Condition(field, operator, operand, compiled))
        return tuple(conditions)

    def network(self, node: Node) -> NetworkPolicy:
        if isinstance(node, ScalarNode) and self.value(node) is None:
            return NetworkPolicy()
        entries = self.mapping(node, "network", _NETWORK_KEYS)
        lists: dict[str, tuple[str, ...]] = {}
        for key, (_, value_node) in entries.items():
            if isinstance(value_node, SequenceNode) and not value_node.value:
                lists[key] = ()
                continue
            hosts = self.strings(value_node, f"network.{key}")
            for index, host in enumerate(hosts):
                if not _valid_host(host):
                    item = value_node.value[index] if isinstance(value_node, SequenceNode) else value_node
                    self.fail(
                        item,
                        f"network.{key}[{index}] {host!r} is not a host name, host glob or IP address/network"
                        " (no scheme, port or path)",
                    )
            lists[key] = hosts
        return NetworkPolicy(lists.get("allowed_hosts"), lists.get("denied_hosts", ()))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_network(host, strict=False)
    except ValueError:
        return bool(_HOST.match(host))
    return True


def _listing(names: tuple[str, ...]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " or " + names[-1]
