"""``system.message``: privileged context sent with an input, as a ``role: "system"`` message
right after that input in every later model request (compaction included), through the SDK.

The SDK's rule is checked at the API (at most one per request, last, right after the
``user.message`` or ``user.custom_tool_result`` it accompanies); the placement in the
conversation is checked on the requests the scripted model received, and, for input that
arrived while the model was answering, on the conversation builder directly.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from gateway.harness import context_budget as sizing
from gateway.harness.compaction import summary_request
from gateway.harness.context import build_messages
from gateway.tools.toolbox import build_toolbox
from tests.conftest import Scripts
from tests.support.sessions import send_and_stream, strictly_valid, user_message
from tests.support.transcripts import transcript_of


def system_message(text: str) -> dict[str, Any]:
    return {"type": "system.message", "content": [{"type": "text", "text": text}]}


def _shape(messages: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    return [(m["role"], [b.get("text", b["type"]) for b in m["content"]]) for m in messages]


def test_a_system_message_follows_its_input_in_this_and_every_later_request(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "A1"}]},
            {"content": [{"type": "text", "text": "A2"}]},
        ]
    )
    agent = client.beta.agents.create(name="sys", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    send_and_stream(client, session.id, [user_message("Q1"), system_message("Answer in French.")])
    send_and_stream(client, session.id, [user_message("Q2")])

    first, second = (r["messages"] for r in scripts.requests_for(marker))
    assert _shape(first) == [("user", ["Q1"]), ("system", ["Answer in French."])]
    assert _shape(second) == [
        ("user", ["Q1"]),
        ("system", ["Answer in French."]),
        ("assistant", ["A1"]),
        ("user", ["Q2"]),
    ]
    raw = client.beta.sessions.events.with_raw_response.list(session.id, limit=100).http_response.json()
    logged = [e for e in raw["data"] if e["type"] == "system.message"]
    assert [e["content"] for e in logged] == [[{"type": "text", "text": "Answer in French."}]]
    strictly_valid(logged)


@pytest.mark.parametrize(
    ("events", "says"),
    [
        ([system_message("alone")], "must directly follow"),
        ([system_message("first"), user_message("then")], "last event"),
        ([user_message("a"), system_message("one"), system_message("two")], "last event"),
        ([{"type": "user.interrupt"}, system_message("after an interrupt")], "must directly follow"),
        (
            [user_message("a"), {"type": "system.message", "content": [{"type": "image", "source": {}}]}],
            "events.1",
        ),
        ([user_message("a"), {"type": "system.message", "content": []}], "events.1"),
    ],
)
def test_a_misplaced_or_malformed_system_message_is_refused(
    client: anthropic.Anthropic, environment: Any, events: list[dict[str, Any]], says: str
) -> None:
    agent = client.beta.agents.create(name="sys-bad", model="claude-sonnet-4-6")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.sessions.events.send(session.id, events=events)  # type: ignore[arg-type]
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert says in refused.value.message
    assert client.beta.sessions.events.list(session.id).data == []  # nothing was appended


def test_a_system_message_that_arrived_during_a_model_call_moves_with_its_input() -> None:
    transcript = transcript_of(
        user_message("Q1"),
        {"type": "span.model_request_start", "tether_context_seq": 1},
        user_message("Q2"),
        system_message("Be brief."),
        {"type": "agent.message", "content": [{"type": "text", "text": "A1"}]},
        {"type": "span.model_request_end", "model_request_start_id": "sevt_2", "is_error": False},
    )
    assert transcript.needs_model()
    assert _shape(build_messages(transcript, lambda use: use["name"])) == [
        ("user", ["Q1"]),
        ("assistant", ["A1"]),
        ("user", ["Q2"]),
        ("system", ["Be brief."]),
    ]


def test_a_system_message_with_a_tool_result_waits_for_the_open_uses_results() -> None:
    use = {"type": "agent.custom_tool_use", "name": "lookup", "input": {}}
    transcript = transcript_of(
        user_message("go"),
        use,
        {**use, "name": "other"},
        {"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_2", "content": []},
        system_message("Results are trusted."),
        {"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_3", "content": []},
    )
    shape = _shape(build_messages(transcript, lambda use: use["name"]))
    assert shape[-2:] == [("user", ["tool_result", "tool_result"]), ("system", ["Results are trusted."])]


def test_system_messages_a_summary_covers_still_follow_it() -> None:
    transcript = transcript_of(user_message("Q1"), system_message("Stay formal."), user_message("Q2"))
    summary = [{"type": "text", "text": "SUMMARY"}]
    assert _shape(build_messages(transcript, lambda use: use["name"], 2, summary)) == [
        ("user", ["SUMMARY"]),
        ("system", ["Stay formal."]),
        ("user", ["Q2"]),
    ]


def test_the_summarising_request_is_not_bound_by_the_sessions_system_messages() -> None:
    """ "Reply with one word" must not shape the summary; the system messages follow it anyway."""
    transcript = transcript_of(
        user_message("Q1"),
        system_message("Reply with exactly one word."),
        {"type": "span.model_request_start", "tether_context_seq": 2},
        {"type": "agent.message", "content": [{"type": "text", "text": "Ok"}]},
        {"type": "span.model_request_end", "model_request_start_id": "sevt_3", "is_error": False},
        user_message("Q2"),
    )
    agent = {
        "model": {"id": "claude-sonnet-4-6"},
        "system": "sys",
        "tools": [],
        "mcp_servers": [],
        "metadata": {},
    }
    request = summary_request(agent, transcript, build_toolbox(agent, [], {}), 5, sizing.Budget(4000, 256))
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
    assert "one word" not in str(request["messages"])
