"""``processed_at`` follows the log's order, so time filters through the SDK are exact.

The harness and clients write to one session at the same time; each event's time is given at
commit, in the session's order, so "everything after this event" by time is exactly the
events after it by position.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anthropic

from tests.conftest import Scripts
from tests.support.sessions import user_message


def test_created_at_filters_return_exactly_the_later_events_under_concurrent_writers(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "ack {{last_user_text}}"}]}] * 40)
    agent = client.beta.agents.create(name="clock", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    def send(n: int) -> None:
        client.beta.sessions.events.send(session.id, events=[user_message(f"m{n}")])  # type: ignore[list-item]

    with client.beta.sessions.events.stream(session.id) as stream:
        with ThreadPoolExecutor(max_workers=6) as pool:  # clients racing the harness's own appends
            list(pool.map(send, range(30)))
        for event in stream:
            if event.type == "session.status_idle" and _all_answered(client, session.id):
                break

    events = list(client.beta.sessions.events.list(session.id, limit=1000).data)
    assert len(events) > 30
    times = [e.processed_at for e in events]
    assert times == sorted(times) and len(set(times)) == len(times), "strictly increasing in log order"
    for cut in range(0, len(events), 7):
        later = client.beta.sessions.events.list(session.id, created_at_gt=times[cut], limit=1000).data
        assert [e.id for e in later] == [e.id for e in events[cut + 1 :]]
        earlier = client.beta.sessions.events.list(session.id, created_at_lte=times[cut], limit=1000).data
        assert [e.id for e in earlier] == [e.id for e in events[: cut + 1]]


def _all_answered(client: anthropic.Anthropic, session_id: str) -> bool:
    """The newest reply acknowledges the newest message: the scripted model echoes the last one."""
    events = client.beta.sessions.events.list(session_id, limit=1000).data
    messages = [e for e in events if e.type == "user.message"]
    replies = [e for e in events if e.type == "agent.message"]
    if len(messages) < 30 or not replies:
        return False
    return replies[-1].content[0].text.endswith(messages[-1].content[0].text)
