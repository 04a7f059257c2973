"""The harness's view of a session, derived from the log alone (unit tests, no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.harness.context import ABANDONED, build_messages
from gateway.sessionlog.transcript import Transcript
from tests.support.transcripts import transcript_of


def _text(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


USE = {"type": "agent.tool_use", "name": "bash", "input": {}, "evaluated_permission": "allow"}


def test_a_result_recorded_for_an_interrupted_call_is_not_new_input() -> None:
    transcript = transcript_of(
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
    transcript = transcript_of(_text("go"), USE, {"type": "user.interrupt"}, _text("instead, do this"))
    assert transcript.pending() == []
    assert transcript.needs_model()


def test_an_orphaned_tool_use_gets_an_error_result_before_later_user_text() -> None:
    transcript = transcript_of(_text("go"), USE, {"type": "user.interrupt"}, _text("next"))
    messages = build_messages(transcript, lambda use: use["name"])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    closing = messages[2]["content"]
    assert closing[0]["type"] == "tool_result" and closing[0]["is_error"] is True
    assert closing[0]["content"][0]["text"] == ABANDONED
    assert closing[1] == {"type": "text", "text": "next"}


def test_user_text_sent_while_a_tool_runs_follows_its_result() -> None:
    transcript = transcript_of(
        _text("go"),
        USE,
        _text("also this"),
        {"type": "agent.tool_result", "tool_use_id": "sevt_2", "content": [{"type": "text", "text": "ok"}]},
    )
    messages = build_messages(transcript, lambda use: use["name"])
    assert [b["type"] for b in messages[-1]["content"]] == ["tool_result", "text"]
    assert transcript.needs_model()


def test_a_reply_after_an_interrupt_is_a_new_assistant_message_after_the_abandoned_call() -> None:
    transcript = transcript_of(
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
    transcript = transcript_of(
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
    transcript = transcript_of(
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
    whole = transcript_of(*bodies)
    grown = Transcript.from_events(whole.events[:2])
    grown.extend(whole.events[2:4])
    grown.extend(whole.events[4:])
    assert build_messages(grown, lambda u: u["name"]) == build_messages(whole, lambda u: u["name"])
    assert (grown.pending(), grown.needs_model(), grown.last_seq) == ([], True, 6)
    with pytest.raises(ValueError, match="does not follow"):
        grown.extend(whole.events[3:4])


def _grown_step_by_step(bodies: list[dict[str, Any]], naming: object) -> list[list[dict[str, Any]]]:
    """The conversation after each event, built by resuming from the previous build."""
    whole = transcript_of(*bodies)
    grown = Transcript.from_events([])
    built = []
    for event in whole.events:
        grown.extend([event])
        built.append(build_messages(grown, lambda u: u["name"], naming=naming))
    return built


def test_a_conversation_resumed_from_its_checkpoint_equals_one_built_from_scratch() -> None:
    start = {"type": "span.model_request_start", "tether_context_seq": 0}
    bodies: list[dict[str, Any]] = []
    for turn in range(6):
        first = len(bodies) + 2  # the seq of this turn's model request start
        bodies += [
            _text(f"Q{turn}"),
            {**start, "tether_context_seq": len(bodies) + 1},
            _text(f"late {turn}") if turn % 2 else {"type": "session.status_running"},
            {**USE, "name": f"tool{turn}"},
            {"type": "span.model_request_end", "model_request_start_id": f"sevt_{first}", "is_error": False},
        ]
        use_id = f"sevt_{len(bodies) - 1}"
        if turn == 3:
            bodies.append({"type": "user.interrupt"})
        bodies.append({"type": "agent.tool_result", "tool_use_id": use_id, "is_error": False, "content": []})
        bodies.append({"type": "agent.message", "content": [{"type": "text", "text": f"A{turn}"}]})
    stepwise = _grown_step_by_step(bodies, naming={"map": 1})
    whole = transcript_of(*bodies)
    for count, built in enumerate(stepwise, start=1):
        scratch = build_messages(Transcript.from_events(whole.events[:count]), lambda u: u["name"])
        assert built == scratch, f"differs after event {count}"


def test_a_checkpoint_is_not_reused_for_another_tool_naming() -> None:
    transcript = transcript_of(
        _text("go"), USE, {"type": "agent.tool_result", "tool_use_id": "sevt_2", "content": []}
    )
    first = build_messages(transcript, lambda u: "one_" + u["name"], naming="one")
    again = build_messages(transcript, lambda u: "two_" + u["name"], naming="two")
    assert first[1]["content"][0]["name"] == "one_bash" and again[1]["content"][0]["name"] == "two_bash"
