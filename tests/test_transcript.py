"""The harness's view of a session, derived from the log alone (unit tests, no I/O)."""

from __future__ import annotations

from typing import Any

from gateway.harness.context import ABANDONED, build_messages
from gateway.harness.transcript import Transcript
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
