"""Several gateway replicas on one PostgreSQL: any replica takes any call and serves any
session's stream; exactly one of them runs a session's harness."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support.processes import ServerProcess
from tests.support.restarts import two_gateways_on_postgres
from tests.support.sessions import user_message


@pytest.fixture
def replicas(
    tmp_path: Path, model_server: ServerProcess, api_key: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with two_gateways_on_postgres(tmp_path, model_server.url, api_key) as gateways:
        yield gateways


def _collect(client: anthropic.Anthropic, session_id: str, out: list[Any], ready: threading.Event) -> None:
    with client.beta.sessions.events.stream(session_id) as stream:
        ready.set()
        for event in stream:
            out.append(event)
            if event.type == "session.status_idle":
                return


def test_a_stream_on_one_replica_carries_a_turn_run_by_another(
    replicas: tuple[ServerProcess, ServerProcess], api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "thinking aloud"}]},
        ]
    )
    a, b = (anthropic.Anthropic(base_url=r.url, api_key=api_key, max_retries=0) for r in replicas)
    agent = a.beta.agents.create(name="replicated", model="claude-sonnet-4-6", system=marker)
    environment = b.beta.environments.create(name="shared")
    session = b.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    assert a.beta.sessions.retrieve(session.id).agent.id == agent.id

    seen_on_a: list[Any] = []
    seen_on_b: list[Any] = []
    ready_a, ready_b = threading.Event(), threading.Event()
    readers = [
        threading.Thread(target=_collect, args=(a, session.id, seen_on_a, ready_a)),
        threading.Thread(target=_collect, args=(b, session.id, seen_on_b, ready_b)),
    ]
    for reader in readers:
        reader.start()
    assert ready_a.wait(10) and ready_b.wait(10)
    a.beta.sessions.events.send(session.id, events=[user_message("hello")])  # type: ignore[list-item]
    for reader in readers:
        reader.join(30)

    assert [e.id for e in seen_on_b] == [e.id for e in seen_on_a]
    assert [e.type for e in seen_on_b] == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    # Exactly one replica ran the turn: the model was asked once.
    assert len(scripts.requests_for(marker)) == 1
    assert b.beta.sessions.retrieve(session.id).status == "idle"
