"""Decisions: operators, precedence, path normalisation, globs and the agent's own policies."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest

from policies.agent_config import ToolConfig, agent_tools, tool_config, toolset_config
from policies.conditions import is_under, normalise_path
from policies.engine import AGENT_POLICIES, PolicySet
from policies.loader import parse_policy
from policies.rules import ToolCall


def policies(*texts: str) -> PolicySet:
    return PolicySet([parse_policy(textwrap.dedent(text), f"p{i}.yaml") for i, text in enumerate(texts)])


def one_rule(when: str, *, tools: str = '["bash"]', decision: str = "deny") -> PolicySet:
    return policies(
        f"""
        version: 1
        rules:
          - id: r
            tools: {tools}
            when:
              {when}
            decision: {decision}
        """
    )


def bash(**arguments: Any) -> ToolCall:
    return ToolCall("bash", "agent", None, arguments)


def permission(policy_set: PolicySet, call: ToolCall, agent_policy: str = "always_allow") -> str:
    return policy_set.decide(call, agent_policy).permission


# -- operators -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "arguments", "expected"),
    [
        (r"command: {matches: '\brm\s+-rf\b'}", {"command": "cd /x && rm -rf build"}, "deny"),
        (r"command: {matches: '\brm\s+-rf\b'}", {"command": "rm -r build"}, "allow"),
        (r"command: {matches: '\brm\s+-rf\b'}", {}, "allow"),
        (r"command: {matches: 'rm'}", {"command": None}, "allow"),
        # non-strings are matched as JSON text, so a list cannot slip past a regex
        (r"""command: {matches: '"rm", "-rf"'}""", {"command": ["rm", "-rf"]}, "deny"),
        (r"command: {not_matches: '^git '}", {"command": "curl x"}, "deny"),
        (r"command: {not_matches: '^git '}", {"command": "git status"}, "allow"),
        (r"command: {not_matches: '^git '}", {}, "allow"),
        ("restart: {equals: true}", {"restart": True}, "deny"),
        ("restart: {equals: true}", {"restart": 1}, "allow"),
        ("restart: {equals: true}", {"restart": False}, "allow"),
        ("timeout_ms: {equals: 5}", {"timeout_ms": 5}, "deny"),
        ("mode: {in: [a, b]}", {"mode": "b"}, "deny"),
        ("mode: {in: [a, b]}", {"mode": "c"}, "allow"),
        ("mode: {in: [1, 2]}", {"mode": True}, "allow"),
        ("mode: {in: [a]}", {}, "allow"),
        ("file_path: {under: /workspace/src}", {"file_path": "/workspace/src/a.py"}, "deny"),
        ("file_path: {under: /workspace/src}", {"file_path": "/workspace/src"}, "deny"),
        ("file_path: {under: /workspace/src}", {"file_path": "/workspace/srcx/a.py"}, "allow"),
        ("file_path: {under: /workspace/src}", {"file_path": ["/workspace/src/a"]}, "allow"),
        ("file_path: {not_under: /workspace/src}", {"file_path": "/etc/passwd"}, "deny"),
        ("file_path: {not_under: /workspace/src}", {"file_path": "/workspace/src/a"}, "allow"),
        ("file_path: {not_under: /workspace/src}", {}, "allow"),
        ("file_path: {not_under: /workspace/src}", {"file_path": 3}, "allow"),
        ("restart: {exists: true}", {"restart": False}, "deny"),
        ("restart: {exists: true}", {"restart": None}, "allow"),
        ("restart: {exists: true}", {}, "allow"),
        ("restart: {exists: false}", {}, "deny"),
        ("restart: {exists: false}", {"restart": None}, "deny"),
        ("restart: {exists: false}", {"restart": True}, "allow"),
        ("options.force: {equals: true}", {"options": {"force": True}}, "deny"),
        ("options.force: {equals: true}", {"options": {"force": False}}, "allow"),
        ("options.force: {equals: true}", {"options": "force"}, "allow"),
        ("options.force: {exists: false}", {"options": {}}, "deny"),
        ("a.b: {equals: 1}", {"a.b": 1, "a": {"b": 2}}, "deny"),
        # field names are taken as written, never as YAML booleans or numbers
        ("on: {equals: 1}", {"on": 1}, "deny"),
        ("2: {exists: true}", {"2": "x"}, "deny"),
    ],
)
def test_operator(condition: str, arguments: dict[str, Any], expected: str) -> None:
    assert permission(one_rule(condition), bash(**arguments)) == expected


def test_all_conditions_of_a_rule_must_hold() -> None:
    rules = policies(
        r"""
        version: 1
        rules:
          - id: push-to-main
            tools: [bash]
            when:
              command: {matches: 'git push', not_matches: '--dry-run'}
              cwd: {under: /workspace/repo}
            decision: deny
        """
    )
    assert permission(rules, bash(command="git push", cwd="repo")) == "deny"
    assert permission(rules, bash(command="git push --dry-run", cwd="repo")) == "allow"
    assert permission(rules, bash(command="git push", cwd="/tmp")) == "allow"
    assert permission(rules, bash(command="git push")) == "allow"


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/workspace/src/../etc", "/workspace/etc"),
        ("src/app.py", "/workspace/src/app.py"),
        ("./src//app.py", "/workspace/src/app.py"),
        ("../../etc/passwd", "/etc/passwd"),
        ("//etc/passwd", "/etc/passwd"),
        ("/workspace/src/", "/workspace/src"),
        ("", "/workspace"),
        ("/../../..", "/"),
    ],
)
def test_normalise_path(path: str, normal: str) -> None:
    assert normalise_path(path) == normal


@pytest.mark.parametrize(
    ("path", "under"),
    [
        ("/workspace/src/a.py", True),
        ("src/a.py", True),
        ("src", True),
        ("/workspace/src/../etc/passwd", False),
        ("/workspace/src/../src/a.py", True),
        ("src/../../workspace/src/x", True),
        ("/workspace/srcfoo/a.py", False),
        ("/workspace//src/./a.py", True),
        ("../workspace/src/a", True),
        ("/workspace", False),
    ],
)
def test_path_tricks(path: str, under: bool) -> None:
    rules = one_rule("file_path: {under: src}", tools="[write]")
    expected = "deny" if under else "allow"
    assert permission(rules, ToolCall("write", "agent", None, {"file_path": path})) == expected


def test_is_under_root_and_self() -> None:
    assert is_under("/anything", "/")
    assert is_under("/workspace", "/workspace")
    assert not is_under("/workspace2", "/workspace")


def test_policy_paths_are_normalised_too() -> None:
    rules = one_rule("file_path: {under: /workspace/src/../lib/}", tools="[write]")
    assert permission(rules, ToolCall("write", "agent", None, {"file_path": "lib/x"})) == "deny"
    assert permission(rules, ToolCall("write", "agent", None, {"file_path": "src/x"})) == "allow"


# -- tool and server globs --------------------------------------------------------------

GLOBS = """
version: 1
rules:
  - id: github-writes
    servers: ["git*"]
    tools: ["create_*", "delete_?"]
    decision: deny
  - id: sandbox-only
    servers: [sandbox]
    tools: [write]
    decision: deny
  - id: mcp-kind-only
    kinds: [mcp]
    tools: [bash]
    decision: deny
"""


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (ToolCall("create_issue", "mcp", "github", {}), "deny"),
        (ToolCall("create_issue", "mcp", "gitlab", {}), "deny"),
        (ToolCall("delete_x", "mcp", "github", {}), "deny"),
        (ToolCall("delete_xy", "mcp", "github", {}), "allow"),
        (ToolCall("Create_issue", "mcp", "github", {}), "allow"),
        (ToolCall("create_issue", "mcp", "jira", {}), "allow"),
        # servers never match sandbox tools unless a glob matches "sandbox"
        (ToolCall("create_x", "agent", None, {}), "allow"),
        (ToolCall("write", "agent", None, {}), "deny"),
        (ToolCall("write", "mcp", "files", {}), "allow"),
        (ToolCall("write", "mcp", "sandbox", {}), "deny"),
        (ToolCall("bash", "mcp", "shell", {}), "deny"),
        (ToolCall("bash", "agent", None, {}), "allow"),
    ],
)
def test_tool_and_server_globs(call: ToolCall, expected: str) -> None:
    assert permission(policies(GLOBS), call) == expected


def test_omitted_tools_and_servers_match_anything() -> None:
    rules = policies("version: 1\nrules: [{id: all, decision: deny}]\n")
    assert permission(rules, bash(command="ls")) == "deny"
    assert permission(rules, ToolCall("anything", "mcp", "any", {})) == "deny"


# -- custom tools ------------------------------------------------------------------------


def test_custom_tools_are_untouched() -> None:
    rules = policies("version: 1\nrules: [{id: all, decision: deny}]\n")
    for agent_policy in ("always_allow", "always_ask", "auto", "anything"):
        decision = rules.decide(ToolCall("bash", "custom", None, {"command": "rm -rf /"}), agent_policy)
        assert decision.permission == "allow"
        assert decision.evaluation == {"type": "always_allow"}
        assert decision.matched == ()


# -- precedence -------------------------------------------------------------------------

LEVELS = """
version: 1
rules:
  - id: allow-ls
    tools: [bash]
    when: {command: {matches: '^ls'}}
    decision: allow
  - id: ask-net
    tools: [bash]
    when: {command: {matches: 'curl'}}
    decision: ask
    message: network access
  - id: deny-rm
    tools: [bash]
    when: {command: {matches: 'rm -rf'}}
    decision: deny
    message: no recursive deletes
  - id: allow-curl-localhost
    tools: [bash]
    when: {command: {matches: 'curl localhost'}}
    decision: allow
"""


@pytest.mark.parametrize(
    ("command", "agent_policy", "expected", "reported"),
    [
        # deny beats ask beats allow, whatever the agent says
        ("ls; curl x; rm -rf /", "auto", "deny", "deny-rm"),
        ("ls; curl x; rm -rf /", "always_allow", "deny", "deny-rm"),
        ("ls; curl x; rm -rf /", "always_ask", "deny", "deny-rm"),
        ("ls; curl localhost", "auto", "ask", "ask-net"),
        ("ls; curl localhost", "always_allow", "ask", "ask-net"),
        # under auto, the rules decide, even to allow
        ("ls -la", "auto", "allow", "allow-ls"),
        ("echo", "auto", "ask", "agent permission_policy auto"),
        # an allow rule never loosens an explicit agent policy
        ("ls -la", "always_ask", "ask", "agent permission_policy always_ask"),
        ("ls -la", "always_allow", "allow", "agent permission_policy always_allow"),
        # an ask rule under always_ask: the agent's own policy already said so
        ("curl x", "always_ask", "ask", "agent permission_policy always_ask"),
        ("echo", "always_allow", "allow", "agent permission_policy always_allow"),
    ],
)
def test_precedence(command: str, agent_policy: str, expected: str, reported: str) -> None:
    decision = policies(LEVELS).decide(bash(command=command), agent_policy)
    assert decision.permission == expected
    assert reported in decision.rule


def test_agent_always_allow_with_deny_rule() -> None:
    decision = policies(LEVELS).decide(bash(command="rm -rf /"), "always_allow")
    assert decision.to_json() == {
        "permission": "deny",
        "evaluation": {"type": "auto", "evaluated_permission": {"type": "deny", "reason_code": "deny-rm"}},
        "rule": "p0.yaml:13 rule 'deny-rm'",
        "matched_rules": ["p0.yaml:13 rule 'deny-rm'"],
        "message": "Permission denied by policy rule 'deny-rm': no recursive deletes",
    }


def test_agent_always_ask_with_allow_rule_asks() -> None:
    decision = policies(LEVELS).decide(bash(command="ls"), "always_ask")
    assert decision.permission == "ask"
    assert decision.evaluation == {"type": "always_ask"}
    assert decision.matched == ("p0.yaml:4 rule 'allow-ls'",)


def test_rule_evaluation_forms() -> None:
    rules = policies(LEVELS)
    allowed = rules.decide(bash(command="ls"), "auto")
    assert allowed.evaluation == {"type": "auto", "evaluated_permission": {"type": "allow"}}
    assert allowed.message is None
    asked = rules.decide(bash(command="curl x"), "auto")
    assert asked.evaluation == {
        "type": "auto",
        "evaluated_permission": {"type": "ask", "reason_code": "ask-net"},
    }
    assert asked.message == "network access"


def test_deny_without_message_still_tells_the_model() -> None:
    decision = one_rule("command: {exists: true}").decide(bash(command="x"), "always_allow")
    assert decision.message == "Permission denied by policy rule 'r'."


def test_ties_report_the_first_rule_in_file_order() -> None:
    first = """
    version: 1
    rules:
      - {id: first-ask, tools: [bash], decision: ask}
      - {id: first-deny, tools: [bash], decision: deny}
    """
    second = """
    version: 1
    rules:
      - {id: second-deny, decision: deny}
    """
    decision = policies(first, second).decide(bash(command="x"), "auto")
    assert decision.rule == "p0.yaml:5 rule 'first-deny'"
    assert decision.matched == (
        "p0.yaml:4 rule 'first-ask'",
        "p0.yaml:5 rule 'first-deny'",
        "p1.yaml:4 rule 'second-deny'",
    )
    reversed_order = policies(second, first).decide(bash(command="x"), "auto")
    assert reversed_order.rule == "p0.yaml:4 rule 'second-deny'"


# -- agent policies alone ---------------------------------------------------------------


def test_agent_policies_without_files() -> None:
    empty = PolicySet()
    call = bash(command="rm -rf /")
    assert empty.decide(call, "always_allow").evaluation == {"type": "always_allow"}
    assert empty.decide(call, "always_ask").evaluation == {"type": "always_ask"}
    auto = empty.decide(call, "auto")
    assert auto.permission == "ask"
    assert auto.evaluation == {
        "type": "auto",
        "evaluated_permission": {"type": "ask", "reason_code": "no_evaluator"},
    }


def test_unknown_agent_policy_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown permission_policy"):
        PolicySet().decide(bash(), "sometimes")


def test_decisions_are_json_serialisable() -> None:
    rules = policies(LEVELS)
    for command in ("ls", "curl", "rm -rf", "echo"):
        for agent_policy in AGENT_POLICIES:
            body = rules.decide(bash(command=command), agent_policy).to_json()
            assert json.loads(json.dumps(body)) == body


# -- agent tool configs -----------------------------------------------------------------

AGENT = {
    "type": "agent",
    "tools": [
        {
            "type": "agent_toolset_20260401",
            "default_config": {"enabled": True, "permission_policy": {"type": "always_allow"}},
            "configs": [
                {"name": "bash", "type": "bash", "enabled": True, "permission_policy": {"type": "auto"}},
                {
                    "name": "write",
                    "type": "write",
                    "enabled": False,
                    "permission_policy": {"type": "always_allow"},
                },
            ],
        },
        {
            "type": "mcp_toolset",
            "mcp_server_name": "github",
            "default_config": {"enabled": True, "permission_policy": {"type": "always_ask"}},
            "configs": [
                {"name": "get_issue", "enabled": True, "permission_policy": {"type": "always_allow"}}
            ],
        },
        {"type": "custom", "name": "deploy", "description": "", "input_schema": {"type": "object"}},
    ],
}


@pytest.mark.parametrize(
    ("kind", "name", "server", "expected"),
    [
        ("agent", "bash", None, ToolConfig(True, "auto")),
        ("agent", "read", None, ToolConfig(True, "always_allow")),
        ("agent", "write", None, ToolConfig(False, "always_allow")),
        ("mcp", "get_issue", "github", ToolConfig(True, "always_allow")),
        ("mcp", "create_issue", "github", ToolConfig(True, "always_ask")),
        ("mcp", "get_issue", "jira", None),
        ("custom", "deploy", None, ToolConfig(True, "always_allow")),
        ("custom", "other", None, None),
    ],
)
def test_tool_config(kind: Any, name: str, server: str | None, expected: ToolConfig | None) -> None:
    assert tool_config(AGENT["tools"], kind, name, server) == expected  # type: ignore[arg-type]


def test_toolset_config_falls_back_to_api_defaults() -> None:
    assert toolset_config({"type": "agent_toolset_20260401"}, "bash") == ToolConfig(True, "always_allow")
    assert toolset_config({"type": "mcp_toolset", "mcp_server_name": "x"}, "t") == ToolConfig(
        True, "always_ask"
    )
    partial = {
        "type": "mcp_toolset",
        "default_config": {"enabled": False, "permission_policy": {"type": "auto"}},
        "configs": [{"name": "t"}],
    }
    assert toolset_config(partial, "t") == ToolConfig(False, "auto")


def test_agent_tools_of_agent_or_session() -> None:
    assert agent_tools(AGENT) == AGENT["tools"]
    assert agent_tools({"type": "session", "agent": AGENT}) == AGENT["tools"]
    with pytest.raises(ValueError, match="no 'tools' list"):
        agent_tools({"type": "session"})
