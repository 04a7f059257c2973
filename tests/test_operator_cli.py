"""``tether sessions list|show|tail|export`` and ``tether agents list|show`` against a real
gateway, through the official SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.commands import events, sessions
from tests.conftest import Scripts
from tests.support.observability import observability_gateway, sdk
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    with observability_gateway(tmp_path_factory.mktemp("cli"), model_server.url, api_key) as server:
        yield server


@pytest.fixture(scope="module")
def finished(served: ServerProcess, api_key: str, model_server: ServerProcess) -> dict[str, Any]:
    """One session that ran a turn, shared by the read-only commands."""
    marker = Scripts(model_server.url).add([{"content": [{"type": "text", "text": "exported reply"}]}])
    with sdk(served, api_key) as client:
        environment = client.beta.environments.create(name="cli-env")
        agent = client.beta.agents.create(name="cli-agent", model="claude-sonnet-4-6", system=marker)
        session = client.beta.sessions.create(
            agent=agent.id, environment_id=environment.id, title="cli session"
        )
        send_and_stream(client, session.id, [user_message("export me")])
        raw = client.beta.sessions.events.with_raw_response.list(session.id, limit=1000)
        return {"agent": agent, "session": session, "events": raw.http_response.json()["data"]}


def run_cli(served: ServerProcess, api_key: str, *argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--gateway", served.url, "--api-key", api_key])
    code = exited.value.code
    return code if isinstance(code, int) else 1


def test_export_writes_the_session_then_every_event_as_json_lines(
    served: ServerProcess,
    api_key: str,
    finished: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sessions, "PROGRESS_EVERY", 2)
    session_id = finished["session"].id

    assert run_cli(served, api_key, "sessions", "export", session_id) == 0

    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert lines[0]["type"] == "session" and lines[0]["id"] == session_id
    assert lines[1:] == finished["events"]
    count = len(finished["events"])
    assert f"{session_id}: 2 events exported" in captured.err
    assert captured.err.rstrip().endswith(f"{session_id}: exported the session and {count} events")


def test_export_to_a_file_as_one_document(
    served: ServerProcess, api_key: str, finished: dict[str, Any], tmp_path: Path
) -> None:
    target = tmp_path / "export.json"
    session_id = finished["session"].id
    assert (
        run_cli(served, api_key, "sessions", "export", session_id, "--file", str(target), "--format", "json")
        == 0
    )
    document = json.loads(target.read_text())
    assert document["session"]["id"] == session_id and document["events"] == finished["events"]


def test_list_and_show(
    served: ServerProcess, api_key: str, finished: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    session_id = finished["session"].id
    assert run_cli(served, api_key, "sessions", "list") == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["ID", "STATUS", "AGENT", "ENVIRONMENT", "TOKENS", "IN/OUT", "AGE", "TITLE"]
    row = next(line for line in table if line.startswith(session_id))
    assert "idle" in row and "cli-agent" in row and "cli session" in row
    assert finished["session"].environment_id in row

    assert run_cli(served, api_key, "sessions", "list", "--json", "--status", "running") == 0
    assert session_id not in capsys.readouterr().out

    assert run_cli(served, api_key, "sessions", "show", session_id) == 0
    shown = capsys.readouterr().out
    assert f"session   {session_id}  (idle)" in shown
    assert "first useful output" in shown and "human corrections     0" in shown
    assert f"audit trail           intact over {len(finished['events'])} events" in shown

    assert run_cli(served, api_key, "sessions", "show", session_id, "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert document["insights"]["integrity"]["ok"] is True


def test_agents_list_and_show(
    served: ServerProcess, api_key: str, finished: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    agent = finished["agent"]
    assert run_cli(served, api_key, "agents", "list") == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(agent.id))
    assert "cli-agent" in row and "claude-sonnet-4-6" in row

    assert run_cli(served, api_key, "agents", "show", agent.id, "--version", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["id"] == agent.id


def test_errors_are_one_line(served: ServerProcess, api_key: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["sessions", "show", "sesn_missing", "--gateway", served.url, "--api-key", api_key])
    assert exited.value.code == 1
    assert "HTTP 404" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["sessions", "list", "--gateway", served.url, "--api-key", ""])
    assert exited.value.code == 1
    assert "API key is needed" in capsys.readouterr().err


def _tail(served: ServerProcess, api_key: str, session_id: str, *flags: str) -> subprocess.Popen[str]:
    command = ["sessions", "tail", session_id, *flags, "--gateway", served.url, "--api-key", api_key]
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("as_json", [False, True], ids=["lines", "json"])
def test_tail_follows_a_turn_live_and_stops_at_idle(
    served: ServerProcess, api_key: str, scripts: Scripts, as_json: bool
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "tailed reply"}]}])
    with sdk(served, api_key) as client:
        environment = client.beta.environments.create(name="tail-env")
        agent = client.beta.agents.create(name="tailed", model="claude-sonnet-4-6", system=marker)
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        tail = _tail(served, api_key, session.id, "--until-idle", *(["--json"] if as_json else []))
        try:
            assert tail.stderr is not None
            following = tail.stderr.readline()  # printed once the stream is open
            assert following.startswith(f"following {session.id}"), following
            client.beta.sessions.events.send(session.id, events=[user_message("go")])  # type: ignore[list-item]
            out, err = tail.communicate(timeout=30)
        finally:
            tail.kill()
        logged = client.beta.sessions.events.with_raw_response.list(session.id).http_response.json()["data"]
    assert tail.returncode == 0, err
    if as_json:
        # Through the SDK's stream models and back, every field of every event survives.
        assert [json.loads(line) for line in out.splitlines()] == logged
        return
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == [event["type"] for event in logged]
    assert any("agent.message" in line and "tailed reply" in line for line in lines)
    assert lines[-1].split()[1:] == ["session.status_idle", "end_turn"]


def test_describe_event_says_what_matters() -> None:
    use = {
        "type": "agent.mcp_tool_use",
        "processed_at": "2026-01-01T10:00:00.250000Z",
        "name": "deploy",
        "mcp_server_name": "ops",
        "input": {"env": "prod"},
        "evaluated_permission": "deny",
        "tether_policy": {"rule": "no-prod"},
    }
    assert events.describe_event(use) == (
        '10:00:00.250  agent.mcp_tool_use         ops/deploy {"env": "prod"}  [deny by no-prod]'
    )
    error = {
        "type": "session.error",
        "processed_at": "2026-01-01T10:00:01Z",
        "error": {"type": "model_overloaded_error", "message": "busy", "retry_status": {"type": "retrying"}},
    }
    assert events.describe_event(error).endswith("model_overloaded_error (retrying): busy")


def test_tail_with_history_replays_the_log_first(
    served: ServerProcess, api_key: str, finished: dict[str, Any]
) -> None:
    session_id = finished["session"].id
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "sessions",
            "tail",
            session_id,
            "--history",
            "--json",
            "--until-idle",
            "--gateway",
            served.url,
            "--api-key",
            api_key,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The history ends with an idle status, so tail stops right after replaying it.
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == finished["events"]


@pytest.mark.parametrize("with_history", [False, True], ids=["live", "history"])
def test_tail_until_idle_returns_at_once_on_an_idle_session(
    served: ServerProcess, api_key: str, finished: dict[str, Any], with_history: bool
) -> None:
    session_id = finished["session"].id
    flags = ["--until-idle", "--json", *(["--history"] if with_history else [])]
    tail = _tail(served, api_key, session_id, *flags)
    try:
        out, err = tail.communicate(timeout=120)  # no new event will come: it must not wait for one
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed == (finished["events"] if with_history else [])
    if not with_history:
        assert f"{session_id} is already idle" in err


def test_tail_until_idle_returns_at_once_on_a_terminated_session(
    served: ServerProcess, api_key: str, model_server: ServerProcess
) -> None:
    marker = Scripts(model_server.url).add(
        [{"fail_first": [{"status": 400, "type": "invalid_request_error", "message": "no"}], "content": []}]
    )
    with sdk(served, api_key) as client:
        environment = client.beta.environments.create(name="terminal-env")
        agent = client.beta.agents.create(name="terminal", model="claude-sonnet-4-6", system=marker)
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        send_and_stream(client, session.id, [user_message("fail")], until="session.status_terminated")
        assert client.beta.sessions.retrieve(session.id).status == "terminated"
    tail = _tail(served, api_key, session.id, "--until-idle")
    try:
        out, err = tail.communicate(timeout=120)
    finally:
        tail.kill()
    assert tail.returncode == 0, err
    assert out == "" and f"{session.id} is terminated" in err
