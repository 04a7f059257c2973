"""``user.interrupt`` stops the in-flight model call or tool call promptly, records what
happened, and leaves an idle session that a new message continues."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import mcp_agent, strictly_valid, user_message


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


def _interrupt_when(
    client: anthropic.Anthropic, session_id: str, trigger: str, ready: Callable[[], None] = lambda: None
) -> tuple[list[Any], float]:
    """Stream the turn; on ``trigger`` (and once ``ready()`` returns) send an interrupt; return
    events up to idle and the seconds from the interrupt to the idle event."""
    seen: list[Any] = []
    sent_at = 0.0
    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(session_id, events=[user_message("start")])  # type: ignore[list-item]
        for event in stream:
            seen.append(event)
            if event.type == trigger and not sent_at:
                ready()
                sent_at = time.monotonic()
                client.beta.sessions.events.send(session_id, events=[{"type": "user.interrupt"}])
            if event.type == "session.status_idle":
                return seen, time.monotonic() - sent_at
    raise AssertionError("no idle event")


def test_interrupt_during_a_long_tool_call_stops_it_within_a_second(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess, tmp_path: Path
) -> None:
    fifo = tmp_path / "started"
    os.mkfifo(fifo)
    started = threading.Event()
    threading.Thread(target=lambda: (open(fifo).read(), started.set()), daemon=True).start()
    marker = scripts.add(
        [
            {
                "content": [
                    {
                        "type": "tool_use",
                        "name": "record",
                        "input": {"line": "x", "ledger": str(tmp_path / "ledger"), "started_fifo": str(fifo)},
                    }
                ]
            },
            {"content": [{"type": "text", "text": "continuing: {{last_user_text}}"}]},
        ]
    )
    agent = mcp_agent(client, marker, "ops", upstream.url + "/mcp", name="long-tool")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    seen, stopped_after = _interrupt_when(
        client,
        session.id,
        "agent.mcp_tool_use",
        lambda: started.wait(30) or pytest.fail("tool never started"),
    )

    assert stopped_after < 1.0, f"the interrupt took {stopped_after:.2f}s"
    types = [e.type for e in seen]
    assert "user.interrupt" in types
    result = next(e for e in seen if e.type == "agent.mcp_tool_result")
    assert result.is_error and "interrupted by the user" in result.content[0].text
    assert seen[-1].stop_reason.type == "end_turn"
    assert client.beta.sessions.retrieve(session.id).status == "idle"

    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[user_message("carry on")])  # type: ignore[list-item]
        reply = next(e for e in stream if e.type == "agent.message")
    assert reply.content[0].text == "continuing: carry on"
    raw = client.beta.sessions.events.with_raw_response.list(session.id).http_response.json()["data"]
    strictly_valid(raw)


def test_interrupt_during_a_model_stream_closes_the_request(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [{"hang_first": 1, "hang_after_events": 2, "content": [{"type": "text", "text": "second try works"}]}]
    )
    agent = client.beta.agents.create(name="hung", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    seen, stopped_after = _interrupt_when(client, session.id, "span.model_request_start")

    assert stopped_after < 1.0
    start = next(e for e in seen if e.type == "span.model_request_start")
    end = next(e for e in seen if e.type == "span.model_request_end")
    assert end.model_request_start_id == start.id and end.is_error
    assert not [e for e in seen if e.type == "agent.message"]
    assert seen[-1].type == "session.status_idle"


def _processes_running(fragment: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if fragment.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_interrupt_during_a_long_bash_kills_it_within_a_second(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    duration = "37.4242"  # unusual enough to find the process by its command line
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "bash", "input": {"command": f"sleep {duration}"}}]},
            {"content": [{"type": "tool_use", "name": "bash", "input": {"command": "echo still usable"}}]},
            {"content": [{"type": "text", "text": "{{last_tool_result}}"}]},
        ]
    )
    agent = client.beta.agents.create(
        name="sleeper", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    def sleeping() -> None:
        deadline = time.monotonic() + 30
        while not _processes_running(f"sleep {duration}"):
            assert time.monotonic() < deadline, "bash never started"
            time.sleep(0.02)  # waiting for an external process to appear; no event to wait on

    seen, stopped_after = _interrupt_when(client, session.id, "agent.tool_use", sleeping)

    assert stopped_after < 1.0, f"the interrupt took {stopped_after:.2f}s"
    result = next(e for e in seen if e.type == "agent.tool_result")
    assert result.is_error and "interrupted by the user" in result.content[0].text
    deadline = time.monotonic() + 5
    while _processes_running(f"sleep {duration}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_running(f"sleep {duration}"), "the interrupted command is still running"

    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[user_message("go on")])  # type: ignore[list-item]
        reply = next(e for e in stream if e.type == "agent.message")
    assert "still usable" in reply.content[0].text
