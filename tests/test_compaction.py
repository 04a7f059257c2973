"""Context management end to end: a session with a small context budget clears old tool results,
compacts older turns into a summary, keeps every original event in its log, still answers from
what the summary kept, and a restarted gateway rebuilds the same compacted request.

Sizes are checked the way the scripted model counts them (``cache.prompt_tokens``: tools, system
and messages at four characters a token), which is also what it reports as usage: the harness
estimates from that usage, the test measures every request the model actually received.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from gateway.harness import context_budget as sizing
from gateway.scripted_model.cache import prompt_tokens
from tests.conftest import Scripts
from tests.support.processes import ServerProcess, start_server
from tests.support.restarts import sdk_client
from tests.support.sessions import send_and_stream, strictly_valid, user_message

WINDOW = 4000
MAX_TOKENS = 256
FACT = "PELICAN-42"
SETTINGS = {"tether.context_window_tokens": str(WINDOW), "tether.max_tokens": str(MAX_TOKENS)}


def _events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    """Every event of the session, through the SDK's pagination."""
    raw: list[dict[str, Any]] = []
    page: str | None = None
    while True:
        options: dict[str, Any] = {"limit": 1000} if page is None else {"limit": 1000, "page": page}
        body = client.beta.sessions.events.with_raw_response.list(session_id, **options).http_response.json()
        raw += body["data"]
        page = body.get("next_page")
        if not page:
            return raw


def _summarising(request: dict[str, Any]) -> bool:
    return "Tether context compaction" in str(request.get("system"))


def _texts(message: dict[str, Any]) -> list[str]:
    return [b["text"] for b in message["content"] if b.get("type") == "text"]


def _filler(turn: int, repeat: int = 1) -> str:
    line = (
        f"Message {turn}: the harbour log for day {turn} reads calm seas, light winds, all moorings checked."
    )
    return " ".join([line] * repeat)


def _add_script(scripts: Scripts, turns: list[dict[str, Any]], compaction: dict[str, Any]) -> str:
    """A script with a ``compaction`` turn too (the ``scripts`` fixture adds turns only)."""
    marker = "script-" + secrets.token_hex(8)
    script = {"match": marker, "turns": turns, "compaction": compaction}
    httpx2.post(f"{scripts.model_url}/_scripts", json=script).raise_for_status()
    return marker


DIGEST = [{"type": "text", "text": "{{conversation_digest}}"}]


def test_a_200_turn_session_stays_within_a_small_window_and_answers_from_the_summary(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    turns = [{"content": [{"type": "text", "text": "Noted: {{last_user_text}}"}]} for _ in range(199)]
    turns.append({"content": [{"type": "text", "text": "From my notes: {{context_summary}}"}]})
    marker = scripts.add(turns)
    agent = client.beta.agents.create(
        name="long", model="claude-sonnet-4-6", system=marker, metadata=SETTINGS
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    sent = [f"Remember: the code word is {FACT}.", *(_filler(k) for k in range(2, 200))]
    sent.append("What was the code word?")

    for text in sent:
        streamed = send_and_stream(client, session.id, [user_message(text)])
        assert streamed[-1].stop_reason.type == "end_turn"
    answer = next(e for e in reversed(streamed) if e.type == "agent.message").content[0].text

    requests = scripts.requests_for(marker)
    budget = sizing.Budget(WINDOW, MAX_TOKENS)
    sizes = [prompt_tokens(r) for r in requests]
    assert max(sizes) <= budget.input_tokens, "a request went over the context budget"
    assert all(r["max_tokens"] + size <= WINDOW for r, size in zip(requests, sizes, strict=True))
    ordinary = [
        (i, size) for i, (r, size) in enumerate(zip(requests, sizes, strict=True)) if not _summarising(r)
    ]
    assert len(ordinary) == 200 and max(size for _, size in ordinary) < budget.compact_at

    raw = _events(client, session.id)
    strictly_valid(raw)
    compactions = [e for e in raw if e["type"] == "agent.thread_context_compacted"]
    assert len(compactions) >= 3
    print(f"{len(compactions)} compactions; largest request {max(sizes)} of {budget.input_tokens} tokens")
    assert all(FACT in e["tether_summary"] for e in compactions), "the first fact was lost in a summary"
    # The log keeps every original event; only the context was compacted.
    user_texts = [e["content"][0]["text"] for e in raw if e["type"] == "user.message"]
    assert user_texts == sent
    assert sum(e["type"] == "agent.message" for e in raw) == 200
    summarising = [r for r in requests if _summarising(r)]
    assert len(summarising) == len(compactions)
    ends = [e for e in raw if e["type"] == "span.model_request_end"]
    assert len(ends) == len(requests) and not any(e["is_error"] for e in ends)
    assert sum(e.get("tether_compaction", False) for e in ends) == len(compactions)
    usage = client.beta.sessions.retrieve(session.id).usage
    assert usage.output_tokens == sum(e["model_usage"]["output_tokens"] for e in ends)

    # Each compaction made the next request smaller, and the session went on.
    for index, (position, size) in enumerate(ordinary[1:], start=1):
        previous_position, previous_size = ordinary[index - 1]
        if position != previous_position + 1:  # a summarising request came in between
            assert size < previous_size * 0.7
            print(f"compaction: request of {previous_size} tokens, then {size} tokens")

    # The answer came from the summary: the last request holds the fact only there.
    last = requests[-1]["messages"]
    holding = [text for message in last for text in _texts(message) if FACT in text]
    assert len(holding) == 1 and holding[0].startswith(sizing.SUMMARY_INTRO)
    # The newest script turn (index 199) answered: turn counting survived the compactions.
    assert answer.startswith("From my notes: [scripted summary: ")
    assert f"the code word is {FACT}" in answer


def test_old_large_tool_results_are_cleared_before_anything_is_compacted(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    rounds = 10
    turns: list[dict[str, Any]] = [
        {"content": [{"type": "tool_use", "name": "fetch_report", "input": {"day": day}}]}
        for day in range(rounds)
    ]
    turns.append({"content": [{"type": "text", "text": "All reports read."}]})
    marker = scripts.add(turns)
    agent = client.beta.agents.create(
        name="reader",
        model="claude-sonnet-4-6",
        system=marker,
        metadata={"tether.context_window_tokens": "6000", "tether.max_tokens": str(MAX_TOKENS)},
        tools=[
            {
                "type": "custom",
                "name": "fetch_report",
                "description": "Fetch one day's report.",
                "input_schema": {"type": "object", "properties": {"day": {"type": "integer"}}},
            }
        ],
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    report = "".join(f"line {n}: all readings nominal. " for n in range(80))  # ~2400 characters

    streamed = send_and_stream(client, session.id, [user_message("Read every report.")])
    for day in range(rounds):
        use = next(e for e in reversed(streamed) if e.type == "agent.custom_tool_use")
        assert use.input == {"day": day}
        answer = {
            "type": "user.custom_tool_result",
            "custom_tool_use_id": use.id,
            "content": [{"type": "text", "text": f"report {day}: {report}"}],
        }
        streamed = send_and_stream(client, session.id, [answer])
    assert streamed[-1].stop_reason.type == "end_turn"
    assert [e.content[0].text for e in streamed if e.type == "agent.message"] == ["All reports read."]

    requests = scripts.requests_for(marker)
    budget = sizing.Budget(6000, MAX_TOKENS)
    assert all(prompt_tokens(r) < budget.compact_at for r in requests)
    raw = _events(client, session.id)
    assert not any(e["type"] == "agent.thread_context_compacted" for e in raw)
    results = [b for m in requests[-1]["messages"] for b in m["content"] if b.get("type") == "tool_result"]
    texts = [b["content"][0]["text"] for b in results]
    assert len(texts) == rounds
    assert texts[:-3] == [sizing.CLEARED] * (rounds - 3)
    assert [t.split(":")[0] for t in texts[-3:]] == ["report 7", "report 8", "report 9"]
    # Uncleared, the last request would not have fit at all; the log keeps every full report.
    assert sum(len(report) for _ in range(rounds)) // 4 > budget.input_tokens
    logged = [e for e in raw if e["type"] == "user.custom_tool_result"]
    assert [e["content"][0]["text"] for e in logged] == [f"report {day}: {report}" for day in range(rounds)]
    cleared_from = next(i for i, r in enumerate(requests) if sizing.CLEARED in str(r["messages"]))
    before, after = prompt_tokens(requests[cleared_from - 1]), prompt_tokens(requests[cleared_from])
    assert after < before
    print(f"clearing: request of {before} tokens, then {after}; last {prompt_tokens(requests[-1])}")


def test_a_failed_compaction_is_recorded_and_the_session_goes_on_uncompacted(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    failing = {"status": 500, "type": "api_error", "message": "summariser down"}
    turns = [{"content": [{"type": "text", "text": "Noted."}]} for _ in range(40)]
    marker = _add_script(scripts, turns, {"fail_first": [failing], "content": DIGEST})
    agent = client.beta.agents.create(
        name="flaky", model="claude-sonnet-4-6", system=marker, metadata=SETTINGS
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    for turn in range(40):
        streamed = send_and_stream(client, session.id, [user_message(_filler(turn, repeat=3))])
        assert streamed[-1].stop_reason.type == "end_turn"

    raw = _events(client, session.id)
    strictly_valid(raw)
    errors = [e for e in raw if e["type"] == "session.error"]
    assert len(errors) == 1
    error = errors[0]["error"]
    assert error["type"] == "model_request_failed_error" and error["retry_status"] == {"type": "retrying"}
    assert "compacting the context failed" in error["message"] and "going on uncompacted" in error["message"]
    failed_at = raw.index(errors[0])
    # The turn went on with the full context; the next turn compacted it.
    assert raw[failed_at + 1]["type"] == "span.model_request_start"
    assert any(e["type"] == "agent.thread_context_compacted" for e in raw[failed_at:])
    assert sum(e["type"] == "agent.message" for e in raw) == 40


def test_a_compaction_that_fails_over_the_budget_idles_the_session_with_the_reason(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    failing = {"status": 400, "type": "invalid_request_error", "message": "no summaries today"}
    turns = [{"content": [{"type": "text", "text": "Noted."}]} for _ in range(4)]
    marker = _add_script(scripts, turns, {"fail_first": [failing] * 5, "content": DIGEST})
    agent = client.beta.agents.create(
        name="stuck", model="claude-sonnet-4-6", system=marker, metadata=SETTINGS
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    send_and_stream(client, session.id, [user_message("a short first turn")])
    before = len(scripts.requests_for(marker))

    huge = "far too long " * 1300  # ~4200 tokens: over the budget with or without the first turn
    streamed = send_and_stream(client, session.id, [user_message(huge)])

    assert streamed[-1].stop_reason.type == "retries_exhausted"
    error = next(e for e in streamed if e.type == "session.error").error
    assert error.type == "model_request_failed_error" and error.retry_status.type == "exhausted"
    assert "exceed the budget" in error.message
    sent = scripts.requests_for(marker)[before:]
    assert len(sent) == 1 and _summarising(sent[0]), "only the summarising call was made"
    assert client.beta.sessions.retrieve(session.id).status == "idle"


@pytest.fixture
def restartable() -> Iterator[list[ServerProcess]]:
    """Gateways started one after another on one data directory (SQLite); stopped at the end."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def _start(
    started: list[ServerProcess], tmp_path: Path, model_server: ServerProcess, api_key: str
) -> ServerProcess:
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_server.url,
        "TETHER_LEASE_TTL_SECONDS": "1.5",
        "TETHER_MODEL_RETRY_BASE_SECONDS": "0.01",
    }
    server = start_server(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data")], env)
    started.append(server)
    return server


def test_a_restarted_gateway_rebuilds_the_same_compacted_request_from_the_log(
    restartable: list[ServerProcess],
    tmp_path: Path,
    model_server: ServerProcess,
    scripts: Scripts,
    api_key: str,
) -> None:
    gate = "compacted-" + secrets.token_hex(6)
    chatty = 36
    turns: list[dict[str, Any]] = [{"content": [{"type": "text", "text": "Noted."}]} for _ in range(chatty)]
    turns.append({"content": [{"type": "text", "text": "Still here: {{context_summary}}"}], "hold": gate})
    marker = scripts.add(turns)
    gateway = _start(restartable, tmp_path, model_server, api_key)
    with sdk_client(gateway, api_key) as client:
        environment = client.beta.environments.create(name="restart-env")
        agent = client.beta.agents.create(
            name="durable", model="claude-sonnet-4-6", system=marker, metadata=SETTINGS
        )
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        for turn in range(chatty):
            send_and_stream(
                client, session.id, [user_message(f"Remember {FACT}. " + _filler(turn, repeat=3))]
            )
        assert any(e["type"] == "agent.thread_context_compacted" for e in _events(client, session.id))
        client.beta.sessions.events.send(session.id, events=[user_message("Are you still there?")])  # type: ignore[list-item]
    arrived = httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", timeout=40)
    assert arrived.status_code == 204, "the held request never reached the model"
    os.kill(gateway.process.pid, signal.SIGKILL)
    gateway.process.wait()
    httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()

    restarted = _start(restartable, tmp_path, model_server, api_key)
    with sdk_client(restarted, api_key) as client, client.beta.sessions.events.stream(session.id) as stream:
        # The resumed run may already be done by the time the stream opens: it replays nothing
        # before it, so look at the log first, then wait on the stream.
        done = any(
            e["type"] == "agent.message" and "Still here" in e["content"][0]["text"]
            for e in _events(client, session.id)
        )
        for event in [] if done else stream:
            if event.type == "agent.message":
                break
        raw = _events(client, session.id)

    last_turn = [r for r in scripts.requests_for(marker) if not _summarising(r)][-2:]
    before, after = last_turn
    assert after == before, "the restarted gateway sent a different request"
    assert before["messages"][0]["content"][0]["text"].startswith(sizing.SUMMARY_INTRO)
    strictly_valid(raw)
    assert sum(e["type"] == "agent.thread_context_compacted" for e in raw) >= 1
    reply = [e for e in raw if e["type"] == "agent.message"][-1]["content"][0]["text"]
    assert reply.startswith("Still here: [scripted summary:")
