"""Policy files: loading, errors with file:line, network lists, and the CLI functions."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest

from policies.cli import check, dry_run
from policies.engine import PolicySet
from policies.loader import load_file, parse_policy
from policies.rules import NetworkPolicy, PolicyError, ToolCall

SAMPLE = r"""version: 1
rules:
  - id: no-recursive-delete
    tools: ["bash"]
    when:
      command: {matches: '\brm\s+-rf\b'}
    decision: deny
    message: "Recursive deletes are not allowed here."
  - id: writes-outside-src-need-review
    tools: ["write", "edit"]
    when:
      file_path: {not_under: "/workspace/src"}
    decision: ask
  - id: github-reads
    servers: [github]
    tools: ["get_*", "list_*"]
    decision: allow
network:
  allowed_hosts: ["pypi.org", "*.github.com"]
  denied_hosts: ["169.254.169.254"]
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# -- loading ----------------------------------------------------------------------------


def test_sample_loads(tmp_path: Path) -> None:
    path = write(tmp_path, "policy.yaml", SAMPLE)
    policy_file = load_file(path)
    assert [(rule.id, rule.line, rule.decision) for rule in policy_file.rules] == [
        ("no-recursive-delete", 3, "deny"),
        ("writes-outside-src-need-review", 9, "ask"),
        ("github-reads", 14, "allow"),
    ]
    assert policy_file.rules[0].reference == f"{path}:3 rule 'no-recursive-delete'"
    assert policy_file.network == NetworkPolicy(("pypi.org", "*.github.com"), ("169.254.169.254",))


def test_readme_example_loads() -> None:
    readme = (Path(__file__).parent.parent / "policies" / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert example is not None
    policy_file = parse_policy(example.group(1), "README.md")
    assert len(policy_file.rules) == 4
    rules = PolicySet([policy_file])
    push = ToolCall("bash", "agent", None, {"command": "git push --force origin main"})
    assert rules.decide(push, "always_allow").rule == "README.md:21 rule 'no-force-push'"
    lease = ToolCall("bash", "agent", None, {"command": "git push --force-with-lease"})
    assert rules.decide(lease, "always_allow").permission == "allow"


@pytest.mark.parametrize(
    "text", ["", "# nothing yet\n", "version: 1\n", "version: 1\nrules:\n", "version: 1\nrules: []\n"]
)
def test_empty_files_are_valid(text: str) -> None:
    policy_file = parse_policy(text, "empty.yaml")
    assert policy_file.rules == ()
    assert policy_file.network is None


def test_no_files_is_valid() -> None:
    empty = PolicySet.load([])
    assert empty.rules == ()
    assert empty.network == NetworkPolicy(None, ())
    assert empty.decide(ToolCall("bash", "agent"), "always_allow").permission == "allow"


def test_a_single_string_is_a_one_item_list() -> None:
    policy_file = parse_policy("version: 1\nrules: [{id: a, tools: bash, servers: gh, decision: ask}]\n", "p")
    assert policy_file.rules[0].tools == ("bash",)
    assert policy_file.rules[0].servers == ("gh",)


def test_network_lists_are_merged_across_files(tmp_path: Path) -> None:
    first = write(
        tmp_path, "a.yaml", "version: 1\nnetwork: {allowed_hosts: [pypi.org], denied_hosts: [10.0.0.0/8]}\n"
    )
    second = write(tmp_path, "b.yaml", "version: 1\nnetwork: {allowed_hosts: [pypi.org, '*.github.com']}\n")
    third = write(tmp_path, "c.yaml", "version: 1\nnetwork: {denied_hosts: ['169.254.169.254', '::1']}\n")
    merged = PolicySet.load([first, second, third]).network
    assert merged.to_json() == {
        "allowed_hosts": ["pypi.org", "*.github.com"],
        "denied_hosts": ["10.0.0.0/8", "169.254.169.254", "::1"],
    }
    only_denied = PolicySet.load([third]).network
    assert only_denied.allowed_hosts is None
    nothing_allowed = parse_policy("version: 1\nnetwork: {allowed_hosts: []}\n", "p").network
    assert nothing_allowed == NetworkPolicy((), ())


# -- malformed files: each error names the file and the line ---------------------------

MALFORMED = [
    # (text, line, message fragment)
    ("version: 1\nrulez: []\n", 2, "unknown key 'rulez'"),
    ("version: 2\n", 1, "unsupported version 2"),
    ("version: '1'\n", 1, "unsupported version '1'"),
    ("version: true\n", 1, "unsupported version true"),
    ("rules: []\n", 1, "missing required key 'version'"),
    ("- version: 1\n", 1, "the file must be a mapping"),
    ("version: 1\nversion: 1\n", 2, "duplicate key 'version'"),
    ("version: 1\nrules: {id: a}\n", 2, "rules must be a list"),
    ("version: 1\nrules:\n  - id: a\n    decision: deny\n    tool: [bash]\n", 5, "unknown key 'tool'"),
    ("version: 1\nrules:\n  - id: a\n    tools: [bash]\n", 3, "missing required key 'decision'"),
    ("version: 1\nrules:\n  - decision: deny\n", 3, "missing required key 'id'"),
    ("version: 1\nrules:\n  - id: a\n    decision: block\n", 4, "unknown decision 'block'"),
    ("version: 1\nrules:\n  - id: a\n    decision: [deny]\n", 4, "unknown decision a list"),
    ("version: 1\nrules:\n  - id: 7\n    decision: deny\n", 3, "must be a non-empty string, got 7"),
    ("version: 1\nrules:\n  - id: 'has space'\n    decision: deny\n", 3, "use letters, digits"),
    ("version: 1\nrules:\n  - id: a\n    decision: deny\n    tools: 3\n", 5, "must be a non-empty string"),
    ("version: 1\nrules:\n  - id: a\n    decision: deny\n    tools: []\n", 5, "must not be empty"),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    tools:\n      - bash\n      - {x: 1}\n",
        7,
        "tools[1]",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    servers: {a: 1}\n",
        5,
        "must be a list of strings",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    kinds: [agent, custom]\n",
        5,
        "unknown kind 'custom'",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    message: [x]\n",
        5,
        "message must be a non-empty string",
    ),
    ("version: 1\nrules:\n  - id: a\n    decision: deny\n    when: [command]\n", 5, "when must be a mapping"),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      command: '^rm'\n",
        6,
        "must be a mapping",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      command: {}\n",
        6,
        "at least one operator",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      command:\n        regex: x\n",
        7,
        "unknown operator 'regex'",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      command:\n        matches: '(rm'\n",
        7,
        "bad regular expression '(rm'",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      c: {not_matches: 5}\n",
        6,
        "expects a regular",
    ),
    ("version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      c: {in: x}\n", 6, "non-empty list"),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      c: {in: []}\n",
        6,
        "non-empty list",
    ),
    ("version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      c: {equals: [1]}\n", 6, "use 'in'"),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      c: {under: ''}\n",
        6,
        "non-empty path",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      c: {not_under: 3}\n",
        6,
        "non-empty path",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      c: {exists: maybe}\n",
        6,
        "true or false",
    ),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n  - id: b\n    decision: ask\n  - id: a\n    decision: ask\n",
        7,
        "duplicate rule id 'a' (first defined at line 3)",
    ),
    ("version: 1\nnetwork:\n  allowed: [x]\n", 3, "unknown key 'allowed'"),
    (
        "version: 1\nrules:\n  - id: a\n    decision: deny\n    when:\n      [x]: {exists: true}\n",
        6,
        "plain names",
    ),
    ("version: 1\nnetwork:\n  allowed_hosts:\n    - pypi.org\n    - https://x.com/a\n", 5, "not a host name"),
    ("version: 1\nnetwork:\n  denied_hosts: example.com:443\n", 3, "not a host name"),
    ("version: 1\nnetwork: [pypi.org]\n", 2, "network must be a mapping"),
    ("version: 1\nrules:\n  - id: a\n    decision: deny\n   tools: [x]\n", 5, "invalid YAML"),
    ("version: 1\nrules: [\n", 3, "invalid YAML"),
    ("version: 1\n---\nversion: 1\n", 2, "invalid YAML"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), MALFORMED)
def test_malformed_file_names_file_and_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as caught:
        PolicySet.load([path])
    error = caught.value
    assert (error.path, error.line) == (str(path), line), str(error)
    assert fragment in error.message
    assert str(error).startswith(f"{path}:{line}: ")


def test_duplicate_rule_ids_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "version: 1\nrules:\n  - {id: x, decision: ask}\n")
    second = write(
        tmp_path, "b.yaml", "version: 1\nrules:\n  - {id: y, decision: ask}\n  - {id: x, decision: deny}\n"
    )
    with pytest.raises(PolicyError) as caught:
        PolicySet.load([first, second])
    assert str(caught.value) == f"{second}:4: duplicate rule id 'x' (first defined at {first}:3)"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read: No such file"):
        PolicySet.load([tmp_path / "missing.yaml"])
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00version")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_file(binary)


# -- tether policy check ----------------------------------------------------------------


def test_check_lists_rules_in_plain_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "policy.yaml", SAMPLE)
    assert check([path]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        f"{path}: version 1, 3 rules",
        f"  {path}:3 no-recursive-delete: deny bash when command matches '\\brm\\s+-rf\\b'"
        " — Recursive deletes are not allowed here.",
        f"  {path}:9 writes-outside-src-need-review: ask write or edit when file_path is not under /workspace/src",
        f"  {path}:14 github-reads: allow get_* or list_* on server github",
        "  network: allowed hosts pypi.org, *.github.com; denied hosts 169.254.169.254",
        "OK: 3 rules in 1 file.",
    ]


def test_check_describes_every_operator(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        "ops.yaml",
        """\
        version: 1
        rules:
          - id: everything
            kinds: [mcp]
            servers: [a, b, c]
            when:
              x: {not_matches: '^ok$', equals: "s", in: [1, "two"], under: src, exists: true}
              y: {exists: false}
            decision: ask
        network: {allowed_hosts: []}
        """,
    )
    assert check([path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        f"  {path}:3 everything: ask any tool on servers a, b or c (MCP tools only) when "
        'x does not match \'^ok$\' and x equals "s" and x is one of 1, "two" and '
        "x is under /workspace/src and x is given and y is not given"
    )
    assert out[2] == "  network: no hosts allowed"


def test_check_reports_errors_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "good.yaml", "version: 1\nrules: [{id: a, decision: deny}]\n")
    bad = write(tmp_path, "bad.yaml", "version: 1\nrules:\n  - id: b\n    decision: block\n")
    assert check([good, bad]) == 1
    out, err = capsys.readouterr()
    assert f"{good}:2 a: deny any tool" in out
    assert err.splitlines() == [
        f"error: {bad}:4: rule 'b': unknown decision 'block' (expected allow, ask or deny)",
        "1 of 2 policy files have errors.",
    ]


def test_check_reports_duplicate_ids_across_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = write(tmp_path, "a.yaml", "version: 1\nrules: [{id: a, decision: deny}]\n")
    second = write(tmp_path, "b.yaml", "version: 1\nrules: [{id: a, decision: ask}]\n")
    assert check([first, second]) == 1
    assert (
        capsys.readouterr().err == f"error: {second}:2: duplicate rule id 'a' (first defined at {first}:2)\n"
    )


def test_check_without_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert check([]) == 0
    assert "own permission_policy applies" in capsys.readouterr().out


# -- tether policy dry-run --------------------------------------------------------------

AGENT: dict[str, Any] = {
    "type": "agent",
    "id": "agent_1",
    "tools": [
        {
            "type": "agent_toolset_20260401",
            "default_config": {"enabled": True, "permission_policy": {"type": "always_allow"}},
            "configs": [
                {
                    "name": "edit",
                    "type": "edit",
                    "enabled": False,
                    "permission_policy": {"type": "always_allow"},
                }
            ],
        },
        {
            "type": "mcp_toolset",
            "mcp_server_name": "github",
            "default_config": {"enabled": True, "permission_policy": {"type": "always_ask"}},
            "configs": [{"name": "list_repos", "enabled": True, "permission_policy": {"type": "auto"}}],
        },
        {"type": "custom", "name": "deploy", "description": "d", "input_schema": {"type": "object"}},
    ],
}


def tool_use(
    event_id: str, name: str, arguments: dict[str, Any], permission: str | None, **extra: Any
) -> dict:
    event: dict[str, Any] = {"id": event_id, "type": "agent.tool_use", "name": name, "input": arguments}
    if permission is not None:
        event["evaluated_permission"] = permission
        event["evaluation"] = {"type": "always_allow" if permission == "allow" else "always_ask"}
    event.update(extra)
    return event


EVENTS: list[dict[str, Any]] = [
    {"id": "sevt_0", "type": "user.message", "content": [{"type": "text", "text": "go"}]},
    tool_use("sevt_1", "bash", {"command": "rm -rf build"}, "allow"),
    tool_use("sevt_2", "bash", {"command": "ls"}, "allow"),
    tool_use("sevt_3", "write", {"file_path": "/etc/hosts", "content": "x"}, "allow"),
    tool_use("sevt_4", "write", {"file_path": "src/app.py", "content": "x"}, "allow"),
    tool_use("sevt_5", "get_issue", {"n": 1}, "ask", type="agent.mcp_tool_use", mcp_server_name="github"),
    tool_use("sevt_6", "list_repos", {}, "ask", type="agent.mcp_tool_use", mcp_server_name="github"),
    {"id": "sevt_7", "type": "agent.custom_tool_use", "name": "deploy", "input": {"command": "rm -rf /"}},
    tool_use("sevt_8", "edit", {"file_path": "/etc/x"}, "deny", evaluation=None),
    tool_use("sevt_9", "bash", {"command": "echo hi"}, None),
]


def expected_changes(policy: Path) -> list[str]:
    return [
        f'sevt_1  bash {{"command": "rm -rf build"}}: allow → deny by {policy}:3 rule \'no-recursive-delete\'',
        f'sevt_3  write {{"file_path": "/etc/hosts", "content": "x"}}: allow → ask'
        f" by {policy}:9 rule 'writes-outside-src-need-review'",
        f"sevt_6  github/list_repos {{}}: ask → allow by {policy}:14 rule 'github-reads'",
        "3 of 8 tool calls would change.",
    ]


def test_dry_run_reports_exactly_the_changed_calls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, "policy.yaml", SAMPLE)
    events = tmp_path / "events.json"
    events.write_text(json.dumps(EVENTS))
    agent = tmp_path / "agent.json"
    agent.write_text(json.dumps(AGENT))
    assert dry_run([policy], events, agent) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == expected_changes(policy)


def test_dry_run_reads_a_session_export_and_an_events_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = write(tmp_path, "policy.yaml", SAMPLE)
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"session": {"id": "sesn_1", "agent": AGENT}, "events": EVENTS}))
    assert dry_run([policy], export) == 0
    assert capsys.readouterr().out.splitlines() == expected_changes(policy)

    page = tmp_path / "page.json"
    page.write_text(json.dumps({"data": EVENTS, "next_page": None}))
    session = tmp_path / "session.json"
    session.write_text(json.dumps({"type": "session", "agent": AGENT}))
    assert dry_run([policy], page, session) == 0
    assert capsys.readouterr().out.splitlines() == expected_changes(policy)


def test_dry_run_with_no_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dry_run([], EVENTS, AGENT) == 0
    assert capsys.readouterr().out == "No decision would change (8 tool calls checked).\n"


def test_dry_run_flags_tools_the_agent_no_longer_enables(capsys: pytest.CaptureFixture[str]) -> None:
    events = [tool_use("sevt_1", "edit", {"file_path": "a"}, "allow")]
    assert dry_run([], events, AGENT) == 0
    assert capsys.readouterr().out.splitlines() == [
        'sevt_1  edit {"file_path": "a"}: allow → deny by tool not enabled for this agent',
        "1 of 1 tool call would change.",
    ]


def test_dry_run_truncates_long_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = write(tmp_path, "p.yaml", "version: 1\nrules: [{id: d, decision: deny}]\n")
    events = [tool_use("sevt_1", "bash", {"command": "x" * 200}, "allow")]
    assert dry_run([policy], events, {"tools": [{"type": "agent_toolset_20260401"}]}) == 0
    line = capsys.readouterr().out.splitlines()[0]
    preview = '{"command": "' + "x" * 66 + "…"
    assert line == f"sevt_1  bash {preview}: allow → deny by {policy}:2 rule 'd'"


@pytest.mark.parametrize(
    ("events", "agent", "fragment"),
    [
        ("missing.json", None, "cannot read"),
        ("not-json.json", None, "not valid JSON"),
        ("no-agent.json", None, "no agent given"),
        ("no-agent.json", "bad-agent.json", "no 'tools' list"),
        ("object.json", "agent.json", "expected a list of events"),
    ],
)
def test_dry_run_input_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], events: str, agent: str | None, fragment: str
) -> None:
    (tmp_path / "not-json.json").write_text("{")
    (tmp_path / "no-agent.json").write_text(json.dumps(EVENTS))
    (tmp_path / "bad-agent.json").write_text(json.dumps({"type": "agent"}))
    (tmp_path / "object.json").write_text(json.dumps({"type": "session"}))
    (tmp_path / "agent.json").write_text(json.dumps(AGENT))
    agent_path = tmp_path / agent if agent else None
    assert dry_run([], tmp_path / events, agent_path) == 1
    assert fragment in capsys.readouterr().err


def test_dry_run_with_a_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.yaml", "version: 3\n")
    assert dry_run([bad], EVENTS, AGENT) == 1
    assert capsys.readouterr().err == f"error: {bad}:1: unsupported version 3 (a number) (expected 1)\n"
