"""``events.stream(event_deltas=...)``: previews of events still being produced, as the SDK
defines them (``event_start``, then ``content_delta`` fragments for ``agent.message``; start
only for ``agent.thinking``), concluded by the buffered event with the same id. Previews are
never stored in the log."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support.sessions import STREAM_EVENT, user_message

LONG_TEXT = " ".join(f"word{n}" for n in range(300))
PREVIEW_TYPES = {"event_start", "event_delta"}


def _session(client: anthropic.Anthropic, scripts: Scripts, environment: Any, turns: list[Any]) -> str:
    marker = scripts.add(turns)
    agent = client.beta.agents.create(name="previewed", model="claude-sonnet-4-6", system=marker)
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id


def _turn(client: anthropic.Anthropic, session_id: str, **stream_args: Any) -> list[Any]:
    """Open the stream (with ``stream_args``), send a message, collect until the session idles."""
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id, **stream_args) as stream:
        client.beta.sessions.events.send(session_id, events=[user_message("go")])  # type: ignore[list-item]
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle":
                return seen
    raise AssertionError("the stream ended before the session idled")


def _stored(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    data: list[dict[str, Any]] = response.http_response.json()["data"]
    return data


def _texts_by_index(deltas: list[Any]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for delta in deltas:
        assert delta.delta.type == "content_delta" and delta.delta.content.type == "text"
        index = delta.delta.index or 0
        texts[index] = texts.get(index, "") + delta.delta.content.text
    return texts


def test_message_previews_stream_the_text_before_the_stored_message_with_its_id(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    session_id = _session(client, scripts, environment, [{"content": [{"type": "text", "text": LONG_TEXT}]}])

    seen = _turn(client, session_id, event_deltas=["agent.message"])

    types = [event.type for event in seen]
    start = next(e for e in seen if e.type == "event_start")
    message = next(e for e in seen if e.type == "agent.message")
    deltas = [e for e in seen if e.type == "event_delta"]
    assert start.event.type == "agent.message" and start.event.id == message.id
    assert len(deltas) > 1 and all(d.event_id == message.id for d in deltas)
    assert types.index("span.model_request_start") < types.index("event_start")
    assert types.index("event_start") < types.index("event_delta")
    assert max(i for i, t in enumerate(types) if t == "event_delta") < types.index("agent.message")
    assert _texts_by_index(deltas) == {0: LONG_TEXT} and message.content[0].text == LONG_TEXT
    for event in seen:
        STREAM_EVENT.validate_python(event.model_dump(mode="json", exclude_none=True))

    stored = _stored(client, session_id)
    assert not PREVIEW_TYPES & {event["type"] for event in stored}
    assert [e["id"] for e in stored if e["type"] == "agent.message"] == [message.id]


def test_a_run_of_text_blocks_previews_one_message_entry_by_entry_and_thinking_start_only(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    blocks = [
        {"type": "thinking", "thinking": "let me think about it", "signature": "sig"},
        {"type": "text", "text": "first part of the answer"},
        {"type": "text", "text": "second part of the answer"},
    ]
    session_id = _session(client, scripts, environment, [{"content": blocks}])

    seen = _turn(client, session_id, event_deltas=["agent.message", "agent.thinking"])

    starts = [e for e in seen if e.type == "event_start"]
    thinking = next(e for e in seen if e.type == "agent.thinking")
    message = next(e for e in seen if e.type == "agent.message")
    assert [(s.event.type, s.event.id) for s in starts] == [
        ("agent.thinking", thinking.id),
        ("agent.message", message.id),
    ]
    deltas = [e for e in seen if e.type == "event_delta"]
    assert {d.event_id for d in deltas} == {message.id}  # thinking previews carry no deltas
    assert _texts_by_index(deltas) == {0: blocks[1]["text"], 1: blocks[2]["text"]}
    assert [c.text for c in message.content] == [blocks[1]["text"], blocks[2]["text"]]
    # Buffered events are appended once the reply is complete: after every preview of it.
    assert seen.index(starts[0]) < seen.index(starts[1]) < seen.index(thinking) < seen.index(message)


def test_only_the_requested_event_types_are_previewed(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    blocks = [{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "answer"}]
    session_id = _session(client, scripts, environment, [{"content": blocks}])

    seen = _turn(client, session_id, event_deltas=["agent.thinking"])

    previews = [e for e in seen if e.type in PREVIEW_TYPES]
    thinking = next(e for e in seen if e.type == "agent.thinking")
    assert [(p.type, p.event.type, p.event.id) for p in previews] == [
        ("event_start", "agent.thinking", thinking.id)
    ]


def test_without_event_deltas_the_stream_carries_exactly_the_log(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    session_id = _session(client, scripts, environment, [{"content": [{"type": "text", "text": LONG_TEXT}]}])

    seen = _turn(client, session_id)

    assert [e.id for e in seen] == [e["id"] for e in _stored(client, session_id)]
    assert not PREVIEW_TYPES & {e.type for e in seen}


def test_a_request_that_ends_early_leaves_its_preview_closed_by_the_failed_request_end(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    # The first attempt streams two text fragments, then ends without finishing the message.
    turn = {"content": [{"type": "text", "text": LONG_TEXT}], "truncate_first": 1, "truncate_after_events": 4}
    session_id = _session(client, scripts, environment, [turn])

    seen = _turn(client, session_id, event_deltas=["agent.message"])

    starts = [e for e in seen if e.type == "event_start"]
    assert len(starts) == 2, "one preview per attempt"
    abandoned, answered = starts[0].event.id, starts[1].event.id
    failed_end = next(e for e in seen if e.type == "span.model_request_end")
    assert failed_end.is_error
    early = [e for e in seen if e.type == "event_delta" and e.event_id == abandoned]
    assert early and seen.index(early[-1]) < seen.index(failed_end) < seen.index(starts[1])
    message = next(e for e in seen if e.type == "agent.message")
    assert message.id == answered and message.content[0].text == LONG_TEXT
    assert abandoned not in {e["id"] for e in _stored(client, session_id)}


def test_an_unknown_event_deltas_value_is_refused(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    session_id = _session(client, scripts, environment, [{"content": [{"type": "text", "text": "x"}]}])

    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.sessions.events.stream(session_id, event_deltas=["agent.tool_use"])  # type: ignore[list-item]

    error = refused.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and "event_deltas" in error["message"]
