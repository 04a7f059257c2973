"""Plain functions behind ``tether policy check`` and ``tether policy dry-run``.

They print for a human and return the process exit code, so the gateway's argument
parser only has to call them. Problems with the inputs go to stderr.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from policies.agent_config import agent_tools
from policies.engine import PolicySet
from policies.loader import _Parser, load_file
from policies.replay import Change, replay
from policies.rules import NetworkPolicy, PolicyError, PolicyFile

PathLike = str | os.PathLike[str]
JsonSource = PathLike | Mapping[str, Any] | Sequence[Any]
"""A JSON file's path, or its already-parsed content."""

_PREVIEW = 80


def check(paths: Sequence[PathLike]) -> int:
    """Validate policy files and list each rule in plain words; 0 when all are valid, else 1."""
    if not paths:
        print("No policy files given: each agent's own permission_policy applies.")
        return 0
    loaded: list[PolicyFile] = []
    failed = 0
    for path in paths:
        try:
            policy_file = load_file(path)
        except PolicyError as exc:
            for error in every_error(path, exc):
                print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        loaded.append(policy_file)
        _print_file(policy_file)
    if failed:
        print(f"{failed} of {len(paths)} policy files have errors.", file=sys.stderr)
        return 1
    try:
        policies = PolicySet(loaded)
    except PolicyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    count = len(policies.rules)
    print(f"OK: {count} rule{'' if count == 1 else 's'} in {_plural(len(loaded), 'file')}.")
    return 0


def every_error(path: PathLike, first: PolicyError) -> list[PolicyError]:
    """Every error in a policy file, not only the first the loader stops at: the top level,
    each rule and the network section are checked separately (one error each at most)."""
    source = os.fspath(path)
    try:
        root = yaml.compose(Path(source).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return [first]  # unreadable or not YAML: the loader's one error says it all
    if not isinstance(root, MappingNode):
        return [first]
    parser = _Parser(source)
    errors: list[PolicyError] = []

    def attempt(check: Callable[[], object]) -> None:
        try:
            check()
        except PolicyError as exc:
            errors.append(exc)

    sections = {key.value: value for key, value in root.value if isinstance(key, ScalarNode)}
    top = [
        (key, value) for key, value in root.value if getattr(key, "value", None) not in ("rules", "network")
    ]
    attempt(lambda: parser.policy_file(MappingNode(root.tag, top, root.start_mark, root.end_mark)))
    rules = sections.get("rules")
    if isinstance(rules, SequenceNode):
        for index, item in enumerate(rules.value):
            attempt(functools.partial(parser.rule, item, f"rules[{index}]"))
    elif rules is not None:
        attempt(lambda: parser.rules(rules))
    if "network" in sections:
        attempt(lambda: parser.network(sections["network"]))
    unique = list({str(error): error for error in errors}.values())
    return sorted(unique, key=lambda e: e.line or 0) or [first]


def dry_run(paths: Sequence[PathLike], events: JsonSource, agent: JsonSource | None = None) -> int:
    """Report each recorded tool use whose permission would change under the policy files.

    ``events`` is a list of events, an events page (``{"data": [...]}``) or a session
    export (``{"session": {...}, "events": [...]}``); ``agent`` is an agent (or session)
    body and may be omitted when the export carries the agent. Returns 0, or 1 when an
    input cannot be used.
    """
    try:
        policies = PolicySet.load(paths)
        document = _json(events)
        recorded = _events_of(document)
        tools = agent_tools(_json(agent)) if agent is not None else _export_tools(document)
    except (PolicyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = replay(policies, recorded, tools)
    for change in result.changes:
        print(_change_line(change))
    calls = _plural(result.governed, "tool call")
    if result.changes:
        print(f"{len(result.changes)} of {calls} would change.")
    else:
        print(f"No decision would change ({calls} checked).")
    return 0


def _print_file(policy_file: PolicyFile) -> None:
    print(f"{policy_file.path}: version {policy_file.version}, {_plural(len(policy_file.rules), 'rule')}")
    for rule in policy_file.rules:
        print(f"  {rule.source}:{rule.line} {rule.id}: {rule.describe()}")
    if policy_file.network is not None:
        print(f"  network: {_describe_network(policy_file.network)}")


def _describe_network(network: NetworkPolicy) -> str:
    if network.allowed_hosts is None:
        allowed = "egress not restricted"
    elif not network.allowed_hosts:
        allowed = "no hosts allowed"
    else:
        allowed = "allowed hosts " + ", ".join(network.allowed_hosts)
    denied = "; denied hosts " + ", ".join(network.denied_hosts) if network.denied_hosts else ""
    return allowed + denied


def _change_line(change: Change) -> str:
    call = change.call
    tool = f"{call.server}/{call.name}" if call.kind == "mcp" else call.name
    arguments = json.dumps(dict(call.input), ensure_ascii=False, default=str)
    if len(arguments) > _PREVIEW:
        arguments = arguments[: _PREVIEW - 1] + "…"
    event = change.event_id or "(no id)"
    return f"{event}  {tool} {arguments}: {change.old} → {change.new.permission} by {change.new.rule}"


def _json(source: JsonSource) -> Any:
    if not isinstance(source, (str, os.PathLike)):
        return source
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{os.fspath(source)}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{os.fspath(source)}: not valid JSON: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lines = _json_lines(text)
        if lines is None:
            raise ValueError(f"{os.fspath(source)}: not valid JSON or JSON lines: {exc}") from None
        return lines


def _json_lines(text: str) -> Any:
    """JSON lines, as ``tether sessions export`` writes them: the session, then its events
    (returned as an export document); None when the text is not JSON lines."""
    try:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError:
        return None
    if items and isinstance(items[0], Mapping) and items[0].get("type") == "session":
        return {"session": items[0], "events": items[1:]}
    return items


def _events_of(document: Any) -> list[Mapping[str, Any]]:
    if isinstance(document, Mapping):
        for key in ("events", "data"):
            if isinstance(document.get(key), list):
                document = document[key]
                break
    if not isinstance(document, list):
        raise ValueError("events: expected a list of events, {'data': [...]} or {'events': [...]}")
    return [event for event in document if isinstance(event, Mapping)]


def _export_tools(document: Any) -> list[Mapping[str, Any]]:
    if isinstance(document, Mapping):
        for candidate in (document, document.get("session")):
            if isinstance(candidate, Mapping):
                try:
                    return agent_tools(candidate)
                except ValueError:
                    continue
    raise ValueError("no agent given: pass --agent AGENT.json or a session export that includes the agent")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
