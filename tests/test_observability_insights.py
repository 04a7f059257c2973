"""The four figures: computed from a hand-written log, then served by a real gateway for
real sessions (including one whose log was edited behind the gateway's back)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from gateway.observability.insights import aggregate, estimate_cost, session_insights
from gateway.store.chain import ChainLink, link_hash, verify
from tests.conftest import Scripts
from tests.support.observability import observability_gateway, sdk, toolset_agent
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message


def _at(second: float) -> str:
    return f"2026-01-01T00:00:{second:09.6f}Z"


def _log(*entries: tuple[float, str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"id": f"sevt_{i}", "type": kind, "processed_at": _at(t), **body}
        for i, (t, kind, body) in enumerate(entries)
    ]


SESSION = {
    "id": "sesn_demo",
    "title": "demo",
    "status": "idle",
    "created_at": _at(0),
    "agent": {"id": "agent_1", "name": "coder", "version": 3, "model": {"id": "claude-sonnet-4-6"}},
}

LOG = _log(
    (1.0, "user.message", {"content": [{"type": "text", "text": "fix the bug"}]}),
    (1.1, "session.status_running", {}),
    (1.2, "span.model_request_start", {}),
    (
        1.5,
        "span.model_request_end",
        {"model_request_start_id": "sevt_2", "is_error": True, "model_usage": {}},
    ),
    (
        1.5,
        "session.error",
        {"error": {"type": "model_overloaded_error", "retry_status": {"type": "retrying"}}},
    ),
    (2.0, "span.model_request_start", {}),
    (2.0, "agent.tool_use", {"name": "bash", "input": {"command": "false"}, "evaluated_permission": "allow"}),
    (
        3.0,
        "span.model_request_end",
        {
            "model_request_start_id": "sevt_5",
            "is_error": False,
            "model_usage": {"input_tokens": 1000, "output_tokens": 200},
        },
    ),
    (3.5, "agent.tool_result", {"tool_use_id": "sevt_6", "is_error": True, "content": []}),
    (3.6, "session.status_rescheduled", {}),
    (5.0, "session.status_running", {}),
    (5.5, "agent.mcp_tool_use", {"name": "deploy", "mcp_server_name": "ops", "evaluated_permission": "ask"}),
    (5.6, "session.status_idle", {"stop_reason": {"type": "requires_action", "event_ids": ["sevt_11"]}}),
    (6.0, "user.tool_confirmation", {"tool_use_id": "sevt_11", "result": "deny"}),
    (6.1, "agent.mcp_tool_result", {"mcp_tool_use_id": "sevt_11", "is_error": True, "content": []}),
    (6.5, "agent.message", {"content": [{"type": "text", "text": "done"}]}),
    (7.0, "session.status_idle", {"stop_reason": {"type": "end_turn"}}),
    (8.0, "user.message", {"content": [{"type": "text", "text": "no, the other bug"}]}),
    (8.1, "user.interrupt", {}),
)


def test_the_four_figures_from_a_log() -> None:
    figures = session_insights(SESSION, LOG)

    # The tool result at 3.5 s was an error, so the first useful output is the message at 6.5 s.
    assert figures["time_to_first_useful_output_seconds"] == 5.5
    assert figures["first_useful_output"] == {"event_id": "sevt_15", "type": "agent.message"}
    assert figures["human_corrections"] == {
        "total": 3,
        "denials": 1,
        "interrupts": 1,
        "follow_up_messages": 1,
    }
    assert figures["recovery"] == {"total": 2, "model_retries": 1, "reschedules": 1, "restarts_survived": 1}
    assert figures["integrity"] is None  # no chain given
    assert figures["model_calls"] == {"count": 2, "failed": 1, "mean_latency_seconds": 0.65}
    assert figures["tool_calls"] == {"count": 2, "errors": 2}
    assert figures["usage"]["input_tokens"] == 1000 and figures["usage"]["output_tokens"] == 200
    assert figures["duration_seconds"] == 7.1
    # Running 1.1 -> 3.6 and 5.0 -> 5.6.
    assert figures["active_seconds"] == 3.1
    assert figures["agent"] == {"id": "agent_1", "name": "coder", "version": 3, "model": "claude-sonnet-4-6"}


def test_a_successful_tool_result_counts_as_useful_output_and_a_first_batch_is_not_a_correction() -> None:
    log = _log(
        (0.0, "user.message", {"content": []}),
        (0.0, "user.message", {"content": []}),
        (0.4, "agent.tool_use", {"name": "read"}),
        (0.75, "agent.tool_result", {"tool_use_id": "sevt_2", "is_error": False}),
    )
    figures = session_insights(None, log)
    assert figures["time_to_first_useful_output_seconds"] == 0.75
    assert figures["human_corrections"]["total"] == 0
    assert figures["estimated_cost"] is None


def test_costs_are_labelled_estimates_and_unknown_models_get_none() -> None:
    cost = estimate_cost("claude-sonnet-4-6", {"input_tokens": 1_000_000, "output_tokens": 100_000})
    assert cost is not None and cost["is_estimate"] is True and "Estimate" in cost["basis"]
    assert cost["usd"] == pytest.approx(3.0 + 1.5)
    assert estimate_cost("my-local-llama", {"input_tokens": 5}) is None


def test_integrity_reports_where_the_chain_breaks() -> None:
    links, prev = [], "0" * 64
    for seq, body in enumerate(LOG[:3], start=1):
        digest = link_hash("sesn_demo", seq, prev, body)
        links.append(ChainLink(seq, body["id"], prev, digest, body))
        prev = digest
    assert session_insights(SESSION, LOG[:3], verify("sesn_demo", links))["integrity"]["ok"] is True

    forged = {**links[1].body, "type": "session.status_idle"}
    links[1] = ChainLink(2, links[1].event_id, links[1].prev_hash, links[1].hash, forged)
    integrity = session_insights(SESSION, LOG[:3], verify("sesn_demo", links))["integrity"]
    assert integrity["ok"] is False
    assert integrity["broken_at"]["seq"] == 2 and "hash" in integrity["broken_at"]["reason"]


def test_aggregate_takes_medians_and_totals() -> None:
    rows = [session_insights(SESSION, LOG), session_insights(None, LOG[:1])]
    summary = aggregate(rows)
    assert summary["sessions"] == 2
    assert summary["time_to_first_useful_output_seconds"] == {"count": 1, "p50": 5.5, "p90": 5.5, "mean": 5.5}
    assert summary["human_corrections"]["total"] == 3 and summary["human_corrections"]["per_session"] == 1.5
    assert summary["recovery"]["model_retries"] == 1
    assert aggregate([])["sessions"] == 0


# A real gateway ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    with observability_gateway(tmp_path_factory.mktemp("insights"), model_server.url, api_key) as server:
        yield server


def _get(server: ServerProcess, api_key: str, path: str) -> Any:
    response = httpx2.get(server.url + path, headers={"x-api-key": api_key})
    response.raise_for_status()
    return response.json()


def test_insights_endpoints_serve_the_figures_and_catch_a_forged_event(
    observed: ServerProcess, api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add(
        [
            {
                "fail_first": [{"status": 529, "type": "overloaded_error", "message": "busy"}],
                "content": [{"type": "text", "text": "first answer"}],
            },
            {"content": [{"type": "text", "text": "second answer"}]},
        ]
    )
    with sdk(observed, api_key) as client:
        environment = client.beta.environments.create(name="insights-env")
        session = client.beta.sessions.create(
            agent=toolset_agent(client, marker).id, environment_id=environment.id
        )
        send_and_stream(client, session.id, [user_message("hello")])
        second = send_and_stream(client, session.id, [user_message("again, differently")])

    figures = _get(observed, api_key, f"/v1/tether/sessions/{session.id}/insights")
    assert figures["session_id"] == session.id
    assert figures["time_to_first_useful_output_seconds"] is not None
    assert figures["human_corrections"]["follow_up_messages"] == 1
    assert figures["recovery"]["model_retries"] == 1
    assert figures["integrity"]["ok"] is True
    assert figures["estimated_cost"]["is_estimate"] is True

    listing = _get(observed, api_key, "/v1/tether/insights?limit=10")
    assert session.id in [row["session_id"] for row in listing["data"]]
    assert listing["aggregate"]["integrity"]["broken"] == []

    message = next(e for e in second if e.type == "agent.message")
    database = Path(observed.data_dir) / "tether.db"  # type: ignore[attr-defined]
    with sqlite3.connect(database) as db:
        db.execute(
            "UPDATE events SET body = json_set(body, '$.content[0].text', 'forged') WHERE id = ?",
            (message.id,),
        )
    tampered = _get(observed, api_key, f"/v1/tether/sessions/{session.id}/insights")["integrity"]
    assert tampered["ok"] is False and tampered["broken_at"]["event_id"] == message.id
    listing = _get(observed, api_key, "/v1/tether/insights?limit=10")
    assert listing["aggregate"]["integrity"]["broken"] == [session.id]


def test_insights_need_the_key_and_an_existing_session(observed: ServerProcess, api_key: str) -> None:
    assert httpx2.get(observed.url + "/v1/tether/insights").status_code == 401
    missing = httpx2.get(
        observed.url + "/v1/tether/sessions/sesn_nope/insights", headers={"x-api-key": api_key}
    )
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
