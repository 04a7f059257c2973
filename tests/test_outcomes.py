"""Outcomes (``user.define_outcome``), through the SDK against a real gateway: the agent works,
a grader that sees only the task, the rubric and the agent's report decides, and the agent
revises until the grader is satisfied or the iterations run out.

The scripted model plays both: the agent's turns match the agent's system prompt, the
grader's the marker written into the rubric (the grader's first user message holds it).
"""

from __future__ import annotations

import secrets
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.beta.beta_managed_agents_session import BetaManagedAgentsSession

from gateway.harness.context import build_messages
from gateway.sessionlog.outcomes import work_request
from tests.conftest import Scripts
from tests.support.processes import ServerProcess
from tests.support.self_hosted import eventually
from tests.support.sessions import send_and_stream, strictly_valid
from tests.support.transcripts import transcript_of
from tests.test_deployments import deploy


def _grade(result: str, explanation: str, **turn: Any) -> dict[str, Any]:
    return {
        "content": [
            {"type": "tool_use", "name": "grade", "input": {"result": result, "explanation": explanation}}
        ],
        **turn,
    }


def _script(scripts: Scripts, match: str, turns: list[dict[str, Any]]) -> None:
    added = httpx2.post(f"{scripts.model_url}/_scripts", json={"match": match, "turns": turns}, timeout=30)
    assert added.status_code == 201, added.text


def _outcome(grader_marker: str, max_iterations: int | None = 3) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "user.define_outcome",
        "description": "Write a one-paragraph status report.",
        "rubric": {"type": "text", "content": f"{grader_marker}: the report ends with a summary line."},
    }
    if max_iterations is not None:
        event["max_iterations"] = max_iterations
    return event


GRADED: list[dict[str, Any]] = [
    {**_outcome("g"), "outcome_id": "outc_1"},
    {"type": "span.model_request_start", "tether_context_seq": 1},
    {"type": "agent.message", "content": [{"type": "text", "text": "draft"}]},
    {"type": "span.model_request_end", "model_request_start_id": "sevt_2", "is_error": False},
    {"type": "span.outcome_evaluation_start", "outcome_id": "outc_1", "iteration": 0},
    {
        "type": "span.outcome_evaluation_end",
        "outcome_id": "outc_1",
        "iteration": 0,
        "outcome_evaluation_start_id": "sevt_5",
        "result": "satisfied",
        "explanation": "ok",
    },
]
"""A log of an outcome worked on once and graded satisfied (seqs 1 to 6)."""


def _events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    raw = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000).http_response.json()
    strictly_valid(raw["data"])
    return list(raw["data"])


def _session(client: anthropic.Anthropic, environment: Any, marker: str) -> Any:
    agent = client.beta.agents.create(name="worker", model="claude-sonnet-4-6", system=marker)
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id)


def _strict(client: anthropic.Anthropic, session_id: str) -> BetaManagedAgentsSession:
    raw = client.beta.sessions.with_raw_response.retrieve(session_id).http_response.text
    return BetaManagedAgentsSession.model_validate_json(raw, strict=True)


def test_a_failed_grade_sends_the_agent_back_and_a_second_one_satisfies(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    # The grader's verdict depends on the work it is shown: each draft carries a marker.
    one, two = "d1-" + secrets.token_hex(4), "d2-" + secrets.token_hex(4)
    agent_marker = scripts.add(
        [
            {"content": [{"type": "text", "text": f"Draft one ({one})."}]},
            {"content": [{"type": "text", "text": f"Draft two ({two}). Summary: on track."}]},
        ]
    )
    _script(scripts, one, [_grade("needs_revision", "There is no summary line.")])
    _script(scripts, two, [_grade("satisfied", "Ends with a summary line.")])
    grader_marker = "rubric-" + secrets.token_hex(4)  # finds the grader's requests
    session = _session(client, environment, agent_marker)

    streamed = send_and_stream(client, session.id, [_outcome(grader_marker)])

    assert streamed[-1].stop_reason.type == "end_turn"
    log = _events(client, session.id)
    defined = log[0]
    assert defined["type"] == "user.define_outcome" and defined["outcome_id"].startswith("outc_")
    spans = [
        (e["type"], e.get("iteration"), e.get("result")) for e in log if e["type"].startswith("span.outcome")
    ]
    assert [s for s in spans if s[0] != "span.outcome_evaluation_ongoing"] == [
        ("span.outcome_evaluation_start", 0, None),
        ("span.outcome_evaluation_end", 0, "needs_revision"),
        ("span.outcome_evaluation_start", 1, None),
        ("span.outcome_evaluation_end", 1, "satisfied"),
    ]
    starts = [e for e in log if e["type"] == "span.outcome_evaluation_start"]
    ends = [e for e in log if e["type"] == "span.outcome_evaluation_end"]
    assert [e["outcome_evaluation_start_id"] for e in ends] == [s["id"] for s in starts]
    assert all(e["outcome_id"] == defined["outcome_id"] for e in starts + ends)

    first, second = (r["messages"] for r in scripts.requests_for(agent_marker))
    assert "Write a one-paragraph status report." in str(first) and "summary line" not in str(
        first
    )  # no rubric
    assert "There is no summary line." in str(second[-1])  # the revision request
    graded = [
        r for r in httpx2.get(f"{scripts.model_url}/_requests").json() if grader_marker in str(r["messages"])
    ]
    assert len(graded) == 2 and all(agent_marker not in str(r) for r in graded)  # never the agent's context
    assert one in str(graded[0]["messages"]) and one not in str(graded[1]["messages"])

    [evaluation] = _strict(client, session.id).outcome_evaluations
    assert (evaluation.outcome_id, evaluation.result, evaluation.iteration) == (
        defined["outcome_id"],
        "satisfied",
        1,
    )
    assert evaluation.explanation == "Ends with a summary line." and evaluation.completed_at is not None
    # The grader's tokens count like the agent's: in the session's usage and in its insights.
    insights = client.get(f"/v1/tether/sessions/{session.id}/insights", cast_to=object)
    total = _strict(client, session.id).usage.input_tokens
    assert isinstance(insights, dict) and insights["usage"]["input_tokens"] == total
    graders = sum(e["usage"]["input_tokens"] for e in log if e["type"] == "span.outcome_evaluation_end")
    agents = sum(e["model_usage"]["input_tokens"] for e in log if e["type"] == "span.model_request_end")
    assert graders > 0 and total == graders + agents


def test_the_last_iteration_ends_with_max_iterations_reached_and_one_acknowledgement(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    agent_marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "Draft."}]},
            {"content": [{"type": "text", "text": "Understood."}]},
        ]
    )
    grader_marker = scripts.add([_grade("needs_revision", "Still no summary.")])
    session = _session(client, environment, agent_marker)

    streamed = send_and_stream(client, session.id, [_outcome(grader_marker, max_iterations=1)])

    assert streamed[-1].stop_reason.type == "end_turn"
    ends = [e for e in _events(client, session.id) if e["type"] == "span.outcome_evaluation_end"]
    assert [e["result"] for e in ends] == ["max_iterations_reached"]
    requests = scripts.requests_for(agent_marker)
    assert len(requests) == 2 and "no further evaluation" in str(requests[1]["messages"][-1])
    assert _strict(client, session.id).outcome_evaluations[0].result == "max_iterations_reached"


def test_a_grader_at_work_sends_heartbeats_and_an_interrupt_ends_the_evaluation(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, model_server: ServerProcess
) -> None:
    agent_marker = scripts.add([{"content": [{"type": "text", "text": "Done."}]}])
    gate = "grader-" + agent_marker
    grader_marker = scripts.add([_grade("satisfied", "Fine.", hold=gate)])
    session = _session(client, environment, agent_marker)
    client.beta.sessions.events.send(session.id, events=[_outcome(grader_marker)])  # type: ignore[list-item]
    assert httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", timeout=40).status_code == 204

    eventually(
        lambda: sum(e["type"] == "span.outcome_evaluation_ongoing" for e in _events(client, session.id)) >= 2,
        "heartbeats while the grader works",
        timeout=20,
    )
    assert _strict(client, session.id).outcome_evaluations[0].result == "evaluating"
    client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
    httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()

    def ended() -> list[dict[str, Any]] | None:
        log = _events(client, session.id)
        return (
            log
            if log[-1]["type"] == "session.status_idle"
            and any(e["type"] == "span.outcome_evaluation_end" for e in log)
            else None
        )

    log = eventually(ended, "the evaluation to end", timeout=30)
    [end] = [e for e in log if e["type"] == "span.outcome_evaluation_end"]
    assert end["result"] == "interrupted"
    assert _strict(client, session.id).outcome_evaluations[0].result == "interrupted"
    # The end comes before the session idles: a client streaming until idle sees it.
    kinds = [e["type"] for e in log if e["type"] != "span.outcome_evaluation_ongoing"]
    start, finish = kinds.index("span.outcome_evaluation_start"), kinds.index("span.outcome_evaluation_end")
    assert "session.status_idle" not in kinds[start:finish], kinds


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"max_iterations": 21}, "max_iterations"),
        ({"rubric": {"type": "file", "file_id": "file_doesnotexist00000000000"}}, "not found"),
        ({"rubric": {"type": "text", "content": ""}}, "rubric"),
        ({"description": ""}, "description"),
    ],
)
def test_a_malformed_outcome_is_refused(
    client: anthropic.Anthropic, environment: Any, change: dict[str, Any], says: str
) -> None:
    session = _session(client, environment, "no script")
    with pytest.raises(anthropic.BadRequestError, match=says):
        client.beta.sessions.events.send(session.id, events=[{**_outcome("m"), **change}])  # type: ignore[list-item]
    assert client.beta.sessions.events.list(session.id).data == []


def test_one_outcome_at_a_time(client: anthropic.Anthropic, environment: Any, scripts: Scripts) -> None:
    agent_marker = scripts.add(
        [{"content": [{"type": "text", "text": "Working."}], "hold": "never-" + secrets.token_hex(4)}]
    )
    session = _session(client, environment, agent_marker)
    client.beta.sessions.events.send(session.id, events=[_outcome("grader")])  # type: ignore[list-item]
    with pytest.raises(anthropic.BadRequestError, match="already works towards an outcome"):
        client.beta.sessions.events.send(session.id, events=[_outcome("grader")])  # type: ignore[list-item]
    client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])


def test_an_evaluation_cut_off_by_a_crash_is_resumed_with_the_same_start() -> None:
    assert transcript_of(GRADED[0]).needs_evaluation() is False  # the agent has not worked yet
    assert transcript_of(*GRADED[:4]).needs_evaluation() is True
    cut = transcript_of(*GRADED[:5])
    assert cut.needs_evaluation() and cut.outcome is not None and cut.outcome.open_start == ("sevt_5", 5)
    done = transcript_of(*GRADED)
    assert not done.needs_evaluation() and not done.needs_model()


def test_a_deployment_can_start_its_sessions_on_an_outcome(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """Each fire's session works towards it; a grader that gives no verdict fails the outcome."""
    agent_marker = scripts.add([{"content": [{"type": "text", "text": "Report written."}]}])
    agent = client.beta.agents.create(name="deployed-worker", model="claude-sonnet-4-6", system=agent_marker)
    deployment = deploy(client, agent.id, environment.id, initial_events=[_outcome("unscripted grader")])
    run = client.beta.deployments.run(deployment.id)
    assert run.session_id is not None

    def settled() -> BetaManagedAgentsSession | None:
        session = _strict(client, run.session_id or "")
        done = session.outcome_evaluations and session.outcome_evaluations[0].completed_at
        return session if session.status == "idle" and done else None

    session = eventually(settled, "the deployed session's outcome to settle", timeout=30)
    [evaluation] = session.outcome_evaluations
    assert (evaluation.result, evaluation.explanation) == ("failed", "The grader gave no verdict.")
    assert _events(client, session.id)[0]["outcome_id"] == evaluation.outcome_id


def test_a_compacted_context_still_tells_the_agent_an_open_outcome() -> None:
    """The summary replaced the message that set the task: while the outcome was open at the
    cut, the task follows the summary; one with a result before the cut is not repeated."""
    task = work_request(_outcome("g"))

    def texts(cut: int) -> list[str]:
        messages = build_messages(
            transcript_of(*GRADED), lambda use: use["name"], cut, [{"type": "text", "text": "SUMMARY"}]
        )
        return [b["text"] for m in messages for b in m["content"]]

    assert texts(4)[:2] == ["SUMMARY", task]  # cut while the grader had yet to judge
    assert task not in texts(6)  # cut after the verdict
