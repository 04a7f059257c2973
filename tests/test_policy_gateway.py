"""Deployment policy files in a running gateway: decisions recorded with their rule,
denials reaching the model, invalid files refusing the start, and the policy CLI."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import mcp_agent, send_and_stream, strictly_valid, user_message

POLICY = """\
version: 1
rules:
  - id: no-big-sums
    servers: ["calc"]
    tools: ["add"]
    when:
      a: {in: [1000, 2000]}
    decision: deny
    message: "Sums over a thousand need a human."
  - id: never-explode
    tools: ["explode"]
    decision: deny
"""


def _tether(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def governed_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str, policy_file: Path
) -> Iterator[ServerProcess]:
    env = {"TETHER_API_KEYS": api_key, "TETHER_MODEL_BASE_URL": model_server.url}
    data_dir = tmp_path_factory.mktemp("governed")
    args = ["gateway", "--port", "0", "--data-dir", str(data_dir), "--policy", str(policy_file)]
    with running_server(args, env) as server:
        yield server


@pytest.fixture
def governed(governed_gateway: ServerProcess, api_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=governed_gateway.url, api_key=api_key, max_retries=0) as client:
        yield client


def _calc_session(client: anthropic.Anthropic, marker: str, upstream: ServerProcess) -> Any:
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp", name="calc-user")
    environment = client.beta.environments.create(name="governed")
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id)


def test_a_policy_rule_denies_a_call_the_agent_allows_and_the_model_reads_why(
    governed: anthropic.Anthropic, scripts: Scripts, upstream: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 1000, "b": 1}}]},
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 2, "b": 3}}]},
            {"content": [{"type": "text", "text": "done"}]},
        ]
    )
    session = _calc_session(governed, marker, upstream)

    streamed = send_and_stream(governed, session.id, [user_message("add")])

    uses = [e for e in streamed if e.type == "agent.mcp_tool_use"]
    results = [e for e in streamed if e.type == "agent.mcp_tool_result"]
    denied, allowed = uses
    assert denied.evaluated_permission == "deny"
    assert denied.evaluation.type == "auto"
    assert denied.evaluation.evaluated_permission.type == "deny"
    assert denied.evaluation.evaluated_permission.reason_code == "no-big-sums"
    assert "policy.yaml:3" in denied.model_extra["tether_policy"]["rule"]
    assert results[0].is_error and "Sums over a thousand need a human." in results[0].content[0].text
    assert allowed.evaluated_permission == "allow" and allowed.evaluation.type == "always_allow"
    assert "always_allow" in allowed.model_extra["tether_policy"]["rule"]
    assert results[1].content[0].text == "5"
    # The model saw the denial as the tool's error result.
    sent = scripts.requests_for(marker)[1]["messages"][-1]["content"][0]
    assert sent["is_error"] is True and "need a human" in str(sent["content"])
    raw = governed.beta.sessions.events.with_raw_response.list(session.id).http_response.json()["data"]
    strictly_valid(raw)


def test_an_invalid_policy_file_stops_the_gateway_from_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nrules:\n  - id: a\n    decision: block\n")

    started = _tether("gateway", "--port", "0", "--data-dir", str(tmp_path / "d"), "--policy", str(bad))

    assert started.returncode != 0
    assert "listening on" not in started.stdout
    assert f"{bad}:4" in started.stderr and "block" in started.stderr


def test_policy_check_explains_rules_and_names_the_line_of_an_error(
    policy_file: Path, tmp_path: Path
) -> None:
    good = _tether("policy", "check", str(policy_file))
    assert good.returncode == 0, good.stderr
    assert "no-big-sums" in good.stdout and "never-explode" in good.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "version: 1\nrules:\n  - id: x\n    decision: deny\n    when:\n      command: {matches: '('}\n"
    )
    bad = _tether("policy", "check", str(broken))
    assert bad.returncode == 1
    assert f"{broken}:6" in bad.stderr


def test_dry_run_reports_what_a_new_policy_would_change_in_a_recorded_session(
    client: anthropic.Anthropic,
    gateway: ServerProcess,
    api_key: str,
    scripts: Scripts,
    upstream: ServerProcess,
    policy_file: Path,
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 2000, "b": 1}}]},
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 1, "b": 1}}]},
            {"content": [{"type": "text", "text": "ok"}]},
        ]
    )
    session = _calc_session(client, marker, upstream)
    send_and_stream(client, session.id, [user_message("add twice")])

    replay = _tether(
        "policy",
        "dry-run",
        str(policy_file),
        "--session",
        session.id,
        "--gateway",
        gateway.url,
        "--api-key",
        api_key,
    )

    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "allow → deny" in replay.stdout and "no-big-sums" in replay.stdout
    assert "1 of 2 tool calls would change" in replay.stdout
