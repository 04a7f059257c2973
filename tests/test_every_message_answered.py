"""Every user message gets a model call that saw it, in the order it was sent.

A message that arrives while the model is answering an earlier one is not answered by that
reply (the model never saw it): the harness makes a follow-up call once the current one ends,
and the conversation places the late message after the reply, as it happened.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import anthropic
import httpx2

from tests.conftest import Scripts
from tests.support.processes import ServerProcess
from tests.support.sessions import strictly_valid, user_message


def _user_texts(message: dict[str, Any]) -> list[str]:
    return [b["text"] for b in message["content"] if b.get("type") == "text"]


def _stream_until_idle_after(client: anthropic.Anthropic, session_id: str, act: Any, done: Any) -> list[Any]:
    """Open the stream, run ``act()``, collect until an idle event for which ``done(seen)``."""
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id) as stream:
        act()
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle" and done(seen):
                break
    return seen


def test_a_message_sent_while_the_model_answers_gets_its_own_answer_after_that_reply(
    client: anthropic.Anthropic, scripts: Scripts, model_server: ServerProcess, environment: Any
) -> None:
    gate = "mid-call-" + secrets.token_hex(6)
    marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "first reply to {{last_user_text}}"}], "hold": gate},
            {"content": [{"type": "text", "text": "second reply to {{last_user_text}}"}]},
        ]
    )
    agent = client.beta.agents.create(name="listener", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    def act() -> None:
        client.beta.sessions.events.send(session.id, events=[user_message("Q1")])  # type: ignore[list-item]
        arrived = httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", timeout=40)
        assert arrived.status_code == 204, "the first model call never arrived"
        # The model is answering Q1 now: these two arrive mid-call.
        client.beta.sessions.events.send(
            session.id,
            events=[user_message("Q2"), user_message("Q3")],  # type: ignore[list-item]
        )
        httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()

    seen = _stream_until_idle_after(client, session.id, act, lambda seen: True)
    replies = [e.content[0].text for e in seen if e.type == "agent.message"]
    assert replies == ["first reply to Q1", "second reply to Q2\nQ3"]
    assert seen[-1].stop_reason.type == "end_turn"

    requests = scripts.requests_for(marker)
    assert len(requests) == 2, "each input is answered exactly once"
    first, second = (r["messages"] for r in requests)
    assert [(m["role"], _user_texts(m)) for m in first] == [("user", ["Q1"])]
    assert [(m["role"], _user_texts(m)) for m in second] == [
        ("user", ["Q1"]),
        ("assistant", ["first reply to Q1"]),
        ("user", ["Q2", "Q3"]),
    ]

    # The log says when the messages arrived, and reads strictly as the SDK's events.
    listed = client.beta.sessions.events.list(session.id, limit=100)
    raw = [e.model_dump(mode="json") for e in listed.data]
    types = [e["type"] for e in raw]
    assert types.count("span.model_request_start") == 2
    assert types.index("user.message", types.index("span.model_request_start")) < types.index("agent.message")
    strictly_valid(raw)


def test_a_burst_of_messages_during_a_busy_session_is_all_answered_in_order(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    count = 40
    marker = scripts.add([{"content": [{"type": "text", "text": "ack {{last_user_text}}"}]}] * (count + 1))
    agent = client.beta.agents.create(name="busy", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    texts = [f"m{i}" for i in range(count)]
    sent = threading.Event()

    def act() -> None:
        for text in texts:  # one POST each, racing the harness's model calls
            client.beta.sessions.events.send(session.id, events=[user_message(text)])  # type: ignore[list-item]
        sent.set()

    def answered_everything(seen: list[Any]) -> bool:
        if not sent.is_set():
            return False
        last_reply = next((e for e in reversed(seen) if e.type == "agent.message"), None)
        return last_reply is not None and texts[-1] in last_reply.content[0].text

    _stream_until_idle_after(client, session.id, act, answered_everything)

    requests = scripts.requests_for(marker)
    assert 1 <= len(requests) <= count
    final = requests[-1]["messages"]
    assert [m["role"] for m in final] == ["user", "assistant"] * (len(final) // 2) + ["user"]
    user_texts = [text for m in final if m["role"] == "user" for text in _user_texts(m)]
    assert user_texts == texts, "every message is in the conversation once, in the order sent"
    # Every request's newest user turn holds only messages no earlier request had seen.
    answered: list[str] = []
    for request in requests:
        newest = _user_texts(request["messages"][-1])
        assert newest and not set(newest) & set(answered)
        answered += newest
    assert answered == texts
