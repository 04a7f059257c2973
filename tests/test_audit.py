"""The session log is tamper-evident: ``tether audit verify`` names the first edited event."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import Any

import anthropic

from tests.conftest import Scripts, gateway_data_dir
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message


def _verify(gateway: ServerProcess, session_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "audit",
            "verify",
            session_id,
            "--data-dir",
            str(gateway_data_dir(gateway)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _session_with_events(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> tuple[str, list[Any]]:
    marker = scripts.add([{"content": [{"type": "text", "text": "the original answer"}]}])
    agent = client.beta.agents.create(name="audited", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    return session.id, send_and_stream(client, session.id, [user_message("hello")])


def test_an_untouched_log_verifies(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    session_id, events = _session_with_events(client, scripts, environment)

    verified = _verify(gateway, session_id)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"chain intact over {len(events)} events" in verified.stdout


def test_editing_an_event_row_breaks_the_chain_at_that_event(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    session_id, events = _session_with_events(client, scripts, environment)
    message = next(e for e in events if e.type == "agent.message")
    with sqlite3.connect(gateway_data_dir(gateway) / "tether.db") as db:
        db.execute(
            "UPDATE events SET body = json_set(body, '$.content[0].text', 'a forged answer') WHERE id = ?",
            (message.id,),
        )

    verified = _verify(gateway, session_id)

    assert verified.returncode == 1
    assert f"BROKEN at event {message.id}" in verified.stdout
    assert "content does not match its hash" in verified.stdout


def test_deleting_an_event_row_breaks_the_chain_at_the_next_event(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    session_id, events = _session_with_events(client, scripts, environment)
    with sqlite3.connect(gateway_data_dir(gateway) / "tether.db") as db:
        db.execute("DELETE FROM events WHERE id = ?", (events[2].id,))

    verified = _verify(gateway, session_id)

    assert verified.returncode == 1
    assert f"BROKEN at event {events[3].id}" in verified.stdout
