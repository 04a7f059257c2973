"""Fault tests with real processes: ``kill -9`` a gateway mid-turn, then a restarted gateway
(or a second replica on the same database) resumes the session from the log."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support import restarts
from tests.support.processes import ServerProcess, running_server
from tests.support.restarts import LEASE_TTL, sdk_client
from tests.support.self_hosted import eventually
from tests.support.sessions import mcp_agent, strictly_valid, user_message

# Shared fixtures: both backends, gateways started one after another on one database.
database_url = restarts.database_url
launch = restarts.launch


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


def _mcp_agent(client: anthropic.Anthropic, marker: str, upstream: ServerProcess) -> Any:
    return mcp_agent(client, marker, "ops", upstream.url + "/mcp", name="recoverable")


def _await_fifo(path: Path) -> Callable[[], None]:
    """Create a FIFO and return a wait() that blocks until a tool writes to it (bounded)."""
    os.mkfifo(path)
    done = threading.Event()

    def reader() -> None:
        with open(path) as fifo:
            fifo.readline()
        done.set()

    threading.Thread(target=reader, daemon=True).start()

    def wait() -> None:
        assert done.wait(30), "the tool never started"

    return wait


def _stream_until_idle(client: anthropic.Anthropic, session_id: str, after: str | None) -> list[Any]:
    headers = {"Last-Event-ID": after} if after else {}
    seen = []
    with client.beta.sessions.events.stream(session_id, extra_headers=headers) as stream:
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle":
                return seen
    raise AssertionError("stream ended before the session went idle")


def _all_events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    return client.beta.sessions.events.with_raw_response.list(session_id, limit=1000).http_response.json()[
        "data"
    ]


def _kill(server: ServerProcess) -> None:
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


@dataclass
class Resumed:
    client: anthropic.Anthropic
    session_id: str
    before: list[dict[str, Any]]
    """Events logged before the kill."""
    events: list[Any]
    """What the next gateway streamed, up to idle."""
    marker: str
    """The scripted model's marker for this session."""


def _kill_mid_tool_and_resume(
    launch: Callable[[], ServerProcess],
    api_key: str,
    scripts: Scripts,
    upstream: ServerProcess,
    tool: str,
    arguments: dict[str, Any],
    reply: str,
) -> Resumed:
    """A session calls ``tool`` (which signals ``started_fifo`` and blocks); the gateway is
    killed while the call runs; a new gateway on the same database streams the rest."""
    fifo = Path(arguments["started_fifo"])
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": tool, "input": arguments}]},
            {"content": [{"type": "text", "text": reply}]},
        ]
    )
    first = launch()
    client = sdk_client(first, api_key)
    session = client.beta.sessions.create(
        agent=_mcp_agent(client, marker, upstream).id,
        environment_id=client.beta.environments.create(name="e").id,
    )
    tool_started = _await_fifo(fifo)
    client.beta.sessions.events.send(session.id, events=[user_message("go")])  # type: ignore[list-item]
    tool_started()
    before = _all_events(client, session.id)
    _kill(first)

    client = sdk_client(launch(), api_key)
    resumed = _stream_until_idle(client, session.id, before[-1]["id"])
    return Resumed(client, session.id, before, resumed, marker)


def test_kill_during_a_non_idempotent_tool_call_records_the_interruption_and_never_repeats_it(
    launch: Callable[[], ServerProcess],
    api_key: str,
    scripts: Scripts,
    upstream: ServerProcess,
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.txt"
    arguments = {"line": "charge $10", "ledger": str(ledger), "started_fifo": str(tmp_path / "started")}

    resumed = _kill_mid_tool_and_resume(
        launch, api_key, scripts, upstream, "record", arguments, "after restart: {{last_tool_result}}"
    )

    types = [e.type for e in resumed.events]
    assert types[0] == "session.status_rescheduled"
    result = next(e for e in resumed.events if e.type == "agent.mcp_tool_result")
    assert result.is_error and "interrupted by a gateway restart" in result.content[0].text
    assert resumed.events[-1].stop_reason.type == "end_turn"
    assert ledger.read_text() == "charge $10\n", "the non-idempotent tool ran again"
    events = _all_events(resumed.client, resumed.session_id)
    assert len({e["id"] for e in events}) == len(events)
    assert [e["id"] for e in events] == [e["id"] for e in resumed.before] + [e.id for e in resumed.events]
    strictly_valid(events)
    # The model never saw an orphaned tool_use: the interruption is its tool_result.
    last_request = scripts.requests_for(resumed.marker)[-1]
    tool_result = last_request["messages"][-1]["content"][0]
    assert tool_result["type"] == "tool_result" and tool_result["is_error"] is True


def test_kill_during_a_read_only_tool_call_re_runs_it(
    launch: Callable[[], ServerProcess],
    api_key: str,
    scripts: Scripts,
    upstream: ServerProcess,
    tmp_path: Path,
) -> None:
    arguments = {
        "key": "k1",
        "marker": str(tmp_path / "looked-up"),
        "started_fifo": str(tmp_path / "started"),
    }

    resumed = _kill_mid_tool_and_resume(
        launch, api_key, scripts, upstream, "lookup", arguments, "found {{last_tool_result}}"
    )

    result = next(e for e in resumed.events if e.type == "agent.mcp_tool_result")
    assert not result.is_error and result.content[0].text == "value-of-k1"
    assert next(e for e in resumed.events if e.type == "agent.message").content[0].text == "found value-of-k1"


def test_kill_during_a_model_stream_closes_the_request_and_calls_the_model_again(
    launch: Callable[[], ServerProcess], api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add([{"hang_first": 1, "content": [{"type": "text", "text": "answer after restart"}]}])
    first = launch()
    client = sdk_client(first, api_key)
    agent = client.beta.agents.create(name="streamer", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(
        agent=agent.id, environment_id=client.beta.environments.create(name="e").id
    )
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[user_message("hi")])  # type: ignore[list-item]
        for event in stream:
            if event.type == "span.model_request_start":
                break
    # The premise: the request is in the model's hands (its stream hangs) when the kill comes.
    eventually(lambda: scripts.requests_for(marker), "the model never received the request")
    before = _all_events(client, session.id)
    _kill(first)

    second = launch()
    client = sdk_client(second, api_key)
    resumed = _stream_until_idle(client, session.id, before[-1]["id"])

    types = [e.type for e in resumed]
    assert types[:2] == ["session.status_rescheduled", "span.model_request_end"]
    assert resumed[1].is_error and resumed[1].model_request_start_id == before[-1]["id"]
    assert next(e for e in resumed if e.type == "agent.message").content[0].text == "answer after restart"
    assert resumed[-1].stop_reason.type == "end_turn"


def test_a_second_replica_takes_over_when_the_running_one_dies(
    launch: Callable[[], ServerProcess],
    api_key: str,
    scripts: Scripts,
    upstream: ServerProcess,
    tmp_path: Path,
) -> None:
    ledger, fifo = tmp_path / "ledger.txt", tmp_path / "started"
    marker = scripts.add(
        [
            {
                "content": [
                    {
                        "type": "tool_use",
                        "name": "record",
                        "input": {"line": "once", "ledger": str(ledger), "started_fifo": str(fifo)},
                    }
                ]
            },
            {"content": [{"type": "text", "text": "replica B finished"}]},
        ]
    )
    replica_a, replica_b = launch(), launch()
    client_a, client_b = sdk_client(replica_a, api_key), sdk_client(replica_b, api_key)
    session = client_a.beta.sessions.create(
        agent=_mcp_agent(client_a, marker, upstream).id,
        environment_id=client_a.beta.environments.create(name="e").id,
    )
    tool_started = _await_fifo(fifo)
    client_a.beta.sessions.events.send(session.id, events=[user_message("go")])  # type: ignore[list-item]
    tool_started()
    # Replica B serves the same session's log while A owns the run.
    assert client_b.beta.sessions.retrieve(session.id).status == "running"
    before = _all_events(client_b, session.id)
    killed_at = datetime.now(UTC)
    _kill(replica_a)

    resumed = _stream_until_idle(client_b, session.id, before[-1]["id"])

    assert resumed[0].type == "session.status_rescheduled"
    takeover = (resumed[0].processed_at - killed_at).total_seconds()
    assert takeover < float(LEASE_TTL) + 3, f"took {takeover:.1f}s to take over"
    assert next(e for e in resumed if e.type == "agent.message").content[0].text == "replica B finished"
    assert ledger.read_text() == "once\n"
    assert client_b.beta.sessions.retrieve(session.id).status == "idle"
