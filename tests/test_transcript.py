"""The harness's view of a session, derived from the log alone (unit tests, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.harness.context import ABANDONED, build_messages
from gateway.sessionlog.transcript import Transcript
from gateway.store.base import StoredEvent


def _log(*bodies: dict[str, Any]) -> Transcript:
    events = [
        StoredEvent("sesn_t", seq, body.get("id", f"sevt_{seq}"), body["type"], {"id": f"sevt_{seq}", **body})
        for seq, body in enumerate(bodies, start=1)
    ]
    return Transcript.from_events(events)


def _text(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


USE = {"type": "agent.tool_use", "name": "bash", "input": {}, "evaluated_permission": "allow"}


def test_a_result_recorded_for_an_interrupted_call_is_not_new_input() -> None:
    transcript = _log(
        _text("go"),
        {"type": "span.model_request_start"},
        USE,
        {"type": "span.model_request_end"},
        {"type": "user.interrupt"},
        {"type": "agent.tool_result", "tool_use_id": "sevt_3", "is_error": True, "content": []},
        {"type": "session.status_idle", "stop_reason": {"type": "end_turn"}},
    )
    assert not transcript.pending()
    assert not transcript.needs_model()


def test_a_message_after_an_interrupt_needs_the_model_again() -> None:
    transcript = _log(_text("go"), USE, {"type": "user.interrupt"}, _text("instead, do this"))
    assert transcript.pending() == []
    assert transcript.needs_model()


def test_an_orphaned_tool_use_gets_an_error_result_before_later_user_text() -> None:
    transcript = _log(_text("go"), USE, {"type": "user.interrupt"}, _text("next"))
    messages = build_messages(transcript, lambda use: use["name"])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    closing = messages[2]["content"]
    assert closing[0]["type"] == "tool_result" and closing[0]["is_error"] is True
    assert closing[0]["content"][0]["text"] == ABANDONED
    assert closing[1] == {"type": "text", "text": "next"}


def test_user_text_sent_while_a_tool_runs_follows_its_result() -> None:
    transcript = _log(
        _text("go"),
        USE,
        _text("also this"),
        {"type": "agent.tool_result", "tool_use_id": "sevt_2", "content": [{"type": "text", "text": "ok"}]},
    )
    messages = build_messages(transcript, lambda use: use["name"])
    assert [b["type"] for b in messages[-1]["content"]] == ["tool_result", "text"]
    assert transcript.needs_model()


def test_a_reply_after_an_interrupt_is_a_new_assistant_message_after_the_abandoned_call() -> None:
    transcript = _log(
        _text("go"),
        USE,
        {"type": "user.interrupt"},
        _text("instead"),
        {"type": "agent.message", "content": [{"type": "text", "text": "ok"}]},
    )
    messages = build_messages(transcript, lambda use: use["name"])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2]["content"][0]["type"] == "tool_result"
    assert messages[2]["content"][1] == {"type": "text", "text": "instead"}
    assert messages[3]["content"] == [{"type": "text", "text": "ok"}]


def test_a_message_that_arrived_during_a_model_call_follows_its_reply_and_is_unanswered() -> None:
    start = {"type": "span.model_request_start", "tether_context_seq": 1}
    transcript = _log(
        _text("Q1"),
        start,
        _text("Q2"),
        {"type": "agent.message", "content": [{"type": "text", "text": "A1"}]},
        {"type": "span.model_request_end", "model_request_start_id": "sevt_2", "is_error": False},
    )
    assert transcript.needs_model(), "Q2 was not in the request that ended"
    messages = build_messages(transcript, lambda use: use["name"])
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in messages] == [
        ("user", ["Q1"]),
        ("assistant", ["A1"]),
        ("user", ["Q2"]),
    ]


def test_a_message_that_arrived_during_a_failed_attempt_is_answered_by_the_retry_only_if_it_saw_it() -> None:
    transcript = _log(
        _text("Q1"),
        {"type": "span.model_request_start", "tether_context_seq": 1},
        _text("Q2"),
        {"type": "span.model_request_end", "model_request_start_id": "sevt_2", "is_error": True},
        {"type": "span.model_request_start", "tether_context_seq": 1},  # the same request, retried
        {"type": "agent.message", "content": [{"type": "text", "text": "A1"}]},
        {"type": "span.model_request_end", "model_request_start_id": "sevt_5", "is_error": False},
    )
    assert transcript.needs_model()
    messages = build_messages(transcript, lambda use: use["name"])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[2]["content"] == [{"type": "text", "text": "Q2"}]


def test_extending_a_transcript_equals_building_it_at_once() -> None:
    bodies = [
        _text("go"),
        {"type": "span.model_request_start", "tether_context_seq": 1},
        USE,
        {"type": "span.model_request_end", "model_request_start_id": "sevt_2", "is_error": False},
        {"type": "agent.tool_result", "tool_use_id": "sevt_3", "is_error": False, "content": []},
        _text("more"),
    ]
    whole = _log(*bodies)
    grown = Transcript.from_events(whole.events[:2])
    grown.extend(whole.events[2:4])
    grown.extend(whole.events[4:])
    assert build_messages(grown, lambda u: u["name"]) == build_messages(whole, lambda u: u["name"])
    assert (grown.pending(), grown.needs_model(), grown.last_seq) == ([], True, 6)
    with pytest.raises(ValueError, match="does not follow"):
        grown.extend(whole.events[3:4])
