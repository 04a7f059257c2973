"""``tether sessions connect``: a subprocess reading commands from a stdin pipe drives a
session on a real gateway with the scripted model: messages, ``/approve``, ``/deny`` with a
reason, ``/interrupt``, ``/quit``; each effect checked through the SDK. Also what an operator
sees of a waiting session (``requires_action`` in ``sessions list``) and that an export
feeds ``tether policy dry-run``."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import anthropic
import pytest

from gateway import cli
from tests.conftest import Scripts
from tests.support.processes import ServerProcess
from tests.support.sessions import strictly_valid

ASKING = {"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}


class Connected:
    """A running ``tether sessions connect``; lines of stdout and stderr arrive on queues."""

    def __init__(self, gateway: ServerProcess, api_key: str, session_id: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "sessions", "connect", session_id,
             "--gateway", gateway.url, "--api-key", api_key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self.transcript: list[str] = []
        for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, into), daemon=True).start()

    def _pump(self, stream: IO[str] | None, into: queue.Queue[str]) -> None:
        assert stream is not None
        for line in stream:
            self.transcript.append(line)
            into.put(line.rstrip("\n"))

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def expect(self, into: queue.Queue[str], wanted: Callable[[str], bool], timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = into.get(timeout=left)
            except queue.Empty:
                break
            if wanted(line):
                return line
        raise AssertionError("not seen in time; transcript:\n" + "".join(self.transcript))


@pytest.fixture
def waiting_session(client: anthropic.Anthropic, scripts: Scripts, environment: Any) -> str:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "bash", "input": {"command": "echo approved-run"}}]},
            {"content": [{"type": "text", "text": "first saw: {{last_tool_result}}"}]},
            {"content": [{"type": "tool_use", "name": "bash", "input": {"command": "echo denied-run"}}]},
            {"content": [{"type": "text", "text": "second saw: {{last_tool_result}}"}]},
            {"content": [{"type": "tool_use", "name": "bash", "input": {"command": "echo interrupted-run"}}]},
        ]
    )
    agent = client.beta.agents.create(
        name="connected",
        model="claude-sonnet-4-6",
        system=marker,
        tools=[ASKING],  # type: ignore[list-item]
    )
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id


@pytest.fixture
def connected(gateway: ServerProcess, api_key: str, waiting_session: str) -> Iterator[Connected]:
    console = Connected(gateway, api_key, waiting_session)
    try:
        console.expect(console.err, lambda line: line.startswith(f"connected to {waiting_session}"))
        yield console
    finally:
        console.process.kill()
        console.process.wait()


def _logged(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    raw = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    data: list[dict[str, Any]] = raw.http_response.json()["data"]
    return data


def _idle(reason: str) -> Callable[[str], bool]:
    return lambda line: line.split()[1:3] == ["session.status_idle", reason]


def test_connect_sends_approves_denies_interrupts_and_quits(
    connected: Connected,
    waiting_session: str,
    client: anthropic.Anthropic,
    gateway: ServerProcess,
    api_key: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    session_id = waiting_session
    connected.send("/approve")  # nothing waits yet: said so, and the console goes on
    connected.expect(connected.err, lambda line: line == "nothing is waiting for a confirmation")

    # A plain line is a user message; the model's bash call waits for a confirmation.
    connected.send("please run it")
    connected.expect(connected.out, lambda line: "user.message" in line and "please run it" in line)
    connected.expect(connected.out, _idle("requires_action"))
    waiting = connected.expect(connected.err, lambda line: line.startswith("waiting for confirmation: "))
    first_use = next(e for e in _logged(client, session_id) if e["type"] == "agent.tool_use")
    assert first_use["id"] in waiting and "bash" in waiting

    # What an operator sees meanwhile: the session needs action.
    listed = _tether(capsys, gateway, api_key, "sessions", "list", "--limit", "100")
    row = next(line for line in listed.splitlines() if line.startswith(session_id))
    assert row.split()[1] == "requires_action"

    connected.send("/approve")
    connected.expect(
        connected.out, lambda line: "agent.message" in line and "first saw: approved-run" in line
    )
    connected.expect(connected.out, _idle("end_turn"))
    logged = _logged(client, session_id)
    confirmation = next(e for e in logged if e["type"] == "user.tool_confirmation")
    assert (confirmation["tool_use_id"], confirmation["result"]) == (first_use["id"], "allow")
    result = next(e for e in logged if e["type"] == "agent.tool_result")
    assert result["tool_use_id"] == first_use["id"] and not result.get("is_error")
    assert "approved-run" in json.dumps(result["content"])

    # /deny with the tool use's id and a reason: the model reads the reason.
    connected.send("and again")
    connected.expect(connected.out, _idle("requires_action"))
    second_use = [e for e in _logged(client, session_id) if e["type"] == "agent.tool_use"][-1]
    connected.send(f"/deny {second_use['id']} not on a Friday")
    connected.expect(connected.out, _idle("end_turn"))
    logged = _logged(client, session_id)
    denial = [e for e in logged if e["type"] == "user.tool_confirmation"][-1]
    assert (denial["tool_use_id"], denial["result"], denial["deny_message"]) == (
        second_use["id"],
        "deny",
        "not on a Friday",
    )
    reply = [e for e in logged if e["type"] == "agent.message"][-1]
    assert "second saw:" in reply["content"][0]["text"] and "not on a Friday" in reply["content"][0]["text"]

    # /interrupt while a call waits: the call is closed unconfirmed and the turn ends.
    connected.send("one more")
    connected.expect(connected.out, _idle("requires_action"))
    third_use = [e for e in _logged(client, session_id) if e["type"] == "agent.tool_use"][-1]
    connected.send("/interrupt")
    connected.expect(connected.out, _idle("end_turn"))
    logged = _logged(client, session_id)
    closed = [e for e in logged if e["type"] == "agent.tool_result"][-1]
    assert closed["tool_use_id"] == third_use["id"] and closed["is_error"]
    assert any(e["type"] == "user.interrupt" for e in logged)
    strictly_valid(logged)

    connected.send("/quit")
    assert connected.process.wait(timeout=60) == 0
    assert "Traceback" not in "".join(connected.transcript)

    # The export feeds `tether policy dry-run --events`: a deny-all-bash policy changes the approved call.
    export = tmp_path / "session.jsonl"
    _tether(capsys, gateway, api_key, "sessions", "export", session_id, "--file", str(export))
    policy = tmp_path / "no-bash.yaml"
    policy.write_text("version: 1\nrules:\n  - id: no-bash\n    tools: [bash]\n    decision: deny\n")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(["policy", "dry-run", str(policy), "--events", str(export)])
    report = capsys.readouterr()
    assert exited.value.code == 0, report.err
    changed = next(line for line in report.out.splitlines() if line.startswith(first_use["id"]))
    assert "echo approved-run" in changed and ": ask → deny by " in changed and "rule 'no-bash'" in changed
    assert report.out.splitlines()[-1] == "3 of 3 tool calls would change."


def test_end_of_input_leaves_and_a_refused_message_does_not(
    gateway: ServerProcess, api_key: str, waiting_session: str, client: anthropic.Anthropic
) -> None:
    console = Connected(gateway, api_key, waiting_session)
    try:
        console.expect(console.err, lambda line: line.startswith("connected to"))
        console.send(f"/deny sevt_{'x' * 24}")
        refused = console.expect(console.err, lambda line: line.startswith("tether: "))
        assert "answered HTTP 4" in refused or "not found" in refused
        assert console.process.stdin is not None
        console.process.stdin.close()
        assert console.process.wait(timeout=60) == 0
    finally:
        console.process.kill()
        console.process.wait()
    assert not any(e["type"] == "user.tool_confirmation" for e in _logged(client, waiting_session))


def _tether(capsys: pytest.CaptureFixture[str], gateway: ServerProcess, api_key: str, *argv: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--gateway", gateway.url, "--api-key", api_key])
    captured = capsys.readouterr()
    assert exited.value.code == 0, captured.err
    return captured.out
