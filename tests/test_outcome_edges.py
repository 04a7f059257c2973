"""Outcomes at their edges: interrupts at each phase (also sent to another replica), a crash
mid-evaluation, a grader that is down for a while, the state shown while the agent works, and
the durable wake-up of a defined outcome. The happy paths, and an interrupt during grading on
one gateway, are in ``test_outcomes``.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from gateway.store import open_store
from tests.conftest import Scripts
from tests.support import restarts
from tests.support.processes import ServerProcess
from tests.support.restarts import sdk_client
from tests.support.self_hosted import eventually
from tests.support.sessions import user_message
from tests.test_outcomes import _events, _grade, _outcome, _session, _strict

database_url = restarts.database_url
launch = restarts.launch


def _wait(model_server: ServerProcess, gate: str) -> None:
    assert httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", timeout=40).status_code == 204


def _open(model_server: ServerProcess, gate: str) -> None:
    httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()


def _idle_after(client: anthropic.Anthropic, session_id: str, kind: str) -> list[dict[str, Any]] | None:
    log = _events(client, session_id)
    seen = [i for i, e in enumerate(log) if e["type"] == kind]
    return log if seen and log[-1]["type"] == "session.status_idle" and len(log) - 1 > seen[-1] else None


def _kinds(log: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in log if e["type"] != "span.outcome_evaluation_ongoing"]


def test_an_interrupt_while_the_agent_works_ends_the_outcome_and_frees_the_session(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, model_server: ServerProcess
) -> None:
    gate = "work-" + secrets.token_hex(4)
    agent_marker = scripts.add([{"content": [{"type": "text", "text": "Working."}], "hold": gate}])
    session = _session(client, environment, agent_marker)
    client.beta.sessions.events.send(session.id, events=[_outcome("g-" + secrets.token_hex(4))])  # type: ignore[list-item]
    _wait(model_server, gate)
    assert _strict(client, session.id).outcome_evaluations[0].result == "running"  # not "pending"

    client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
    _open(model_server, gate)
    eventually(lambda: _idle_after(client, session.id, "user.interrupt"), "idle after the interrupt")
    eventually(
        lambda: _strict(client, session.id).outcome_evaluations[0].result == "interrupted",
        "the session to show the outcome interrupted",
    )
    client.beta.sessions.events.send(session.id, events=[_outcome("g2")])  # type: ignore[list-item]  # accepted now
    client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])


def test_a_grader_down_for_a_while_leaves_the_evaluation_open_and_it_resumes(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """Overloaded through every retry: the session idles with retries_exhausted, the outcome
    still open; the next message resumes the evaluation (which then succeeds)."""
    agent_marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "Done."}]},
            {"content": [{"type": "text", "text": "Still done."}]},
        ]
    )
    overloaded = {"status": 529, "type": "overloaded_error", "message": "Overloaded"}
    grader_marker = scripts.add([_grade("satisfied", "Fine.", fail_first=[overloaded] * 3)])
    session = _session(client, environment, agent_marker)
    client.beta.sessions.events.send(session.id, events=[_outcome(grader_marker)])  # type: ignore[list-item]

    log = eventually(
        lambda: _idle_after(client, session.id, "span.outcome_evaluation_start"), "the first idle"
    )
    assert log[-1]["stop_reason"]["type"] == "retries_exhausted", [
        (e["type"], e.get("result"), e.get("stop_reason")) for e in log
    ]
    assert not any(e["type"] == "span.outcome_evaluation_end" for e in log)
    assert _strict(client, session.id).outcome_evaluations[0].result == "evaluating"

    client.beta.sessions.events.send(session.id, events=[user_message("any luck?")])  # type: ignore[list-item]
    log = eventually(lambda: _idle_after(client, session.id, "span.outcome_evaluation_end"), "the verdict")
    assert [e["result"] for e in log if e["type"] == "span.outcome_evaluation_end"] == ["satisfied"]
    assert sum(e["type"] == "span.outcome_evaluation_start" for e in log) == 1  # resumed, not restarted


@pytest.mark.anyio
async def test_a_defined_outcome_is_a_durable_wake_up(tmp_path: Path) -> None:
    """Accepted just before a crash, it is still found by pickup afterwards."""
    store = await open_store(f"sqlite://{tmp_path}/store.db")
    try:
        await store.insert(
            "session", {"id": "sesn_out", "created_at": "2026-01-01T00:00:00Z", "status": "idle"}
        )
        await store.append_events("sesn_out", [{"id": "sevt_1", **_outcome("g"), "outcome_id": "outc_1"}])
        assert "sesn_out" in await store.sessions_needing_harness(10)
    finally:
        await store.close()


def _settled(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]] | None:
    log = _events(client, session_id)
    ended = any(e["type"] == "span.outcome_evaluation_end" for e in log)
    return log if ended and log[-1]["type"] == "session.status_idle" else None


def test_an_interrupt_sent_to_another_replica_during_grading_ends_it(
    launch: Callable[[], ServerProcess], api_key: str, scripts: Scripts, model_server: ServerProcess
) -> None:
    agent_marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "Draft."}]},
            {"content": [{"type": "text", "text": "Revised?!"}]},
        ]
    )
    gate = "grader-" + secrets.token_hex(4)
    grader_marker = scripts.add([_grade("needs_revision", "No summary.", hold=gate)])
    first, second = launch(), launch()
    a, b = sdk_client(first, api_key), sdk_client(second, api_key)
    session = _session(a, a.beta.environments.create(name="replicas"), agent_marker)
    a.beta.sessions.events.send(session.id, events=[_outcome(grader_marker)])  # type: ignore[list-item]
    _wait(model_server, gate)
    b.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
    _open(model_server, gate)

    log = eventually(lambda: _settled(a, session.id), "the evaluation to end", timeout=60)
    assert [e["result"] for e in log if e["type"] == "span.outcome_evaluation_end"] == ["interrupted"]
    assert len(scripts.requests_for(agent_marker)) == 1  # no revision turn after the interrupt


def test_an_evaluation_cut_off_by_a_kill_resumes_on_the_next_gateway(
    launch: Callable[[], ServerProcess], api_key: str, scripts: Scripts, model_server: ServerProcess
) -> None:
    agent_marker = scripts.add([{"content": [{"type": "text", "text": "Draft."}]}])
    gate = "grader-" + secrets.token_hex(4)
    grader_marker = scripts.add([_grade("satisfied", "Good.", hold=gate)])
    first = launch()
    a = sdk_client(first, api_key)
    session = _session(a, a.beta.environments.create(name="crash"), agent_marker)
    a.beta.sessions.events.send(session.id, events=[_outcome(grader_marker)])  # type: ignore[list-item]
    _wait(model_server, gate)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    _open(model_server, gate)

    b = sdk_client(launch(), api_key)
    log = eventually(
        lambda: _settled(b, session.id), "the evaluation to finish on the new gateway", timeout=60
    )
    assert sum(e["type"] == "span.outcome_evaluation_start" for e in log) == 1
    assert [e["result"] for e in log if e["type"] == "span.outcome_evaluation_end"] == ["satisfied"]
    assert _strict(b, session.id).outcome_evaluations[0].result == "satisfied"
