"""``sessions.threads`` through the SDK: every session has its primary thread, which is the
session seen as a thread (Tether runs no subagent threads: ``multiagent`` is refused), strictly
in the SDK's shapes, with the session's events listed and streamed through it.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from anthropic.types.beta.beta_managed_agents_session_thread_agent import BetaManagedAgentsSessionThreadAgent
from anthropic.types.beta.sessions.beta_managed_agents_session_thread import BetaManagedAgentsSessionThread

from tests.conftest import Scripts
from tests.support.sessions import send_and_stream, strictly_valid, user_message


def _strict(raw: Any) -> BetaManagedAgentsSessionThread:
    assert raw.http_response.status_code == 200, raw.http_response.text
    return BetaManagedAgentsSessionThread.model_validate_json(raw.http_response.text, strict=True)


def test_the_primary_thread_is_the_session_as_a_thread(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "threaded hello"}]}])
    agent = client.beta.agents.create(name="threaded", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    send_and_stream(client, session.id, [user_message("hi")])

    listed = client.beta.sessions.threads.with_raw_response.list(session.id).http_response.json()
    [raw_thread] = listed["data"]
    assert listed["next_page"] is None
    thread = BetaManagedAgentsSessionThread.model_validate_json(json.dumps(raw_thread), strict=True)
    assert (thread.session_id, thread.parent_thread_id, thread.status) == (session.id, None, "idle")
    assert isinstance(thread.agent, BetaManagedAgentsSessionThreadAgent)
    assert thread.agent.id == agent.id and thread.agent.version == 1 and thread.agent.system == marker
    assert (
        thread.usage is not None
        and thread.usage.input_tokens == client.beta.sessions.retrieve(session.id).usage.input_tokens
    )
    retrieved = _strict(
        client.beta.sessions.threads.with_raw_response.retrieve(thread.id, session_id=session.id)
    )
    assert retrieved.model_copy(update={"stats": None}) == thread.model_copy(
        update={"stats": None}
    )  # stats tick

    through_thread = client.beta.sessions.threads.events.with_raw_response.list(
        thread.id, session_id=session.id
    )
    events = through_thread.http_response.json()["data"]
    strictly_valid(events)
    direct = client.beta.sessions.events.with_raw_response.list(session.id).http_response.json()["data"]
    assert [e["id"] for e in events] == [e["id"] for e in direct]
    assert any(e["type"] == "agent.message" for e in events)

    with client.beta.sessions.threads.events.stream(thread.id, session_id=session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[user_message("again")])  # type: ignore[list-item]
        seen = []
        for event in stream:
            seen.append(event.type)
            if event.type == "session.status_idle":
                break
    assert seen[0] == "user.message" and "session.status_idle" in seen


def test_other_thread_ids_are_not_found_and_the_primary_is_not_archived_alone(
    client: anthropic.Anthropic, environment: Any
) -> None:
    agent = client.beta.agents.create(name="single", model="claude-sonnet-4-6")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    [thread] = client.beta.sessions.threads.list(session.id).data
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.threads.retrieve("sthr_someoneelse", session_id=session.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.threads.events.list("sthr_someoneelse", session_id=session.id)
    with pytest.raises(anthropic.BadRequestError, match="archived with its session"):
        client.beta.sessions.threads.archive(thread.id, session_id=session.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.threads.list("sesn_doesnotexist000000000000")
    assert client.beta.sessions.threads.list(session.id, statuses=["idle"]).data[0].id == thread.id
    assert client.beta.sessions.threads.list(session.id, statuses=["running", "terminated"]).data == []
    with pytest.raises(anthropic.BadRequestError, match="statuses"):
        client.beta.sessions.threads.list(session.id, statuses=["asleep"])  # type: ignore[list-item]
    assert thread.stats is not None and thread.stats.duration_seconds is not None
