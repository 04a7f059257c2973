"""The session log is tamper-evident: ``tether audit verify`` names the first edited event,
offline (reading the database, never creating one) and through the API; ``--expect-head``
catches a tail cut off the chain."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anthropic

from tests.conftest import Scripts, gateway_data_dir
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message


def _audit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def _verify(gateway: ServerProcess, session_id: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _audit("verify", session_id, "--data-dir", str(gateway_data_dir(gateway)), *extra)


def _verify_online(
    gateway: ServerProcess, api_key: str, session_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return _audit("verify", session_id, "--gateway", gateway.url, "--api-key", api_key, *extra)


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


def test_an_untouched_log_verifies_through_the_api(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess, api_key: str
) -> None:
    session_id, events = _session_with_events(client, scripts, environment)
    head = _audit("head", session_id, "--data-dir", str(gateway_data_dir(gateway))).stdout.strip()

    verified = _verify_online(gateway, api_key, session_id, "--expect-head", head)

    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert (
        f"chain intact over {len(events)} events; head {head}; matches the expected head" in verified.stdout
    )


def test_an_edited_event_fails_through_the_api_too(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess, api_key: str
) -> None:
    session_id, events = _session_with_events(client, scripts, environment)
    message = next(e for e in events if e.type == "agent.message")
    with sqlite3.connect(gateway_data_dir(gateway) / "tether.db") as db:
        db.execute(
            "UPDATE events SET body = json_set(body, '$.content[0].text', 'a forged answer') WHERE id = ?",
            (message.id,),
        )

    verified = _verify_online(gateway, api_key, session_id)

    assert verified.returncode == 1
    assert f"BROKEN at event {message.id}" in verified.stdout
    assert "content does not match its hash" in verified.stdout


def test_a_cut_tail_passes_alone_and_fails_against_the_recorded_head(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess, api_key: str
) -> None:
    session_id, events = _session_with_events(client, scripts, environment)
    recorded = _audit("head", session_id, "--gateway", gateway.url, "--api-key", api_key)
    assert recorded.returncode == 0, recorded.stderr
    head = recorded.stdout.strip()
    assert len(head) == 64
    with sqlite3.connect(gateway_data_dir(gateway) / "tether.db") as db:
        db.execute("DELETE FROM events WHERE session_id = ? AND seq > ?", (session_id, len(events) - 2))

    alone = [_verify(gateway, session_id), _verify_online(gateway, api_key, session_id)]
    anchored = [
        _verify(gateway, session_id, "--expect-head", head),
        _verify_online(gateway, api_key, session_id, "--expect-head", head),
    ]

    for result in alone:
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"chain intact over {len(events) - 2} events" in result.stdout
    for result in anchored:
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"is not the expected {head}" in result.stdout


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_offline_verify_from_the_wrong_folder_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("unrelated")
    before = _tree(tmp_path)

    from_cwd = _audit("verify", "sesn_x", cwd=tmp_path)
    named = _audit("verify", "sesn_x", "--data-dir", str(tmp_path / "missing"), cwd=tmp_path)
    after_missing = _tree(tmp_path)
    (tmp_path / "empty").mkdir()
    before_empty = _tree(tmp_path)
    no_database = _audit("verify", "sesn_x", "--data-dir", str(tmp_path / "empty"), cwd=tmp_path)

    assert from_cwd.returncode == 2
    assert from_cwd.stderr.splitlines() == [
        f"tether audit: no data directory at {tmp_path / '.tether'}: pass the gateway's --data-dir, "
        "or --gateway URL to ask the API"
    ]
    assert named.returncode == 2 and f"no data directory at {tmp_path / 'missing'}" in named.stderr
    assert after_missing == before
    assert no_database.returncode == 2
    assert no_database.stderr.splitlines() == [
        f"tether audit: no database at {tmp_path / 'empty' / 'tether.db'}: is this the gateway's data directory?"
    ]
    assert _tree(tmp_path) == before_empty
