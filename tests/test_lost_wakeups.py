"""No accepted input is stranded: a ``user.message`` the API accepted (the POST returned 200)
just before the gateway was killed with SIGKILL is answered once the gateway is restarted,
however far the dead process had got with it (nothing, a lease, a model call, the answer),
and it is never answered twice.

The kill comes right after the POST returns, twenty times in a row, each time on a restarted
gateway sharing the database, on both backends. Two sessions take the messages in turn, so a
session's new input always arrives after earlier, answered input.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic

from tests.conftest import Scripts
from tests.support import restarts
from tests.support.processes import ServerProcess
from tests.support.restarts import sdk_client
from tests.support.sessions import user_message

# Shared fixtures: both backends, gateways started one after another on one database.
database_url = restarts.database_url
launch = restarts.launch

KILLS = 20
ANSWER_BOUND = 15.0
"""From the restarted gateway's ready line to the answer: the dead process's lease expiring
(1.5 s), a pickup scan, and one scripted turn, with room for a loaded machine."""
GIVE_UP = 3
"""Stranded rounds after which the test stops (each costs ``ANSWER_BOUND``)."""


def _events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    return client.beta.sessions.events.with_raw_response.list(session_id, limit=1000).http_response.json()[
        "data"
    ]


def _replies(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each user message's text -> the texts of the agent messages between it and the next one."""
    replies: dict[str, list[str]] = {}
    current: list[str] | None = None
    for event in events:
        if event["type"] == "user.message":
            current = replies.setdefault(event["content"][0]["text"], [])
        elif event["type"] == "agent.message" and current is not None:
            current.append(event["content"][0]["text"])
    return replies


def _finished(events: list[dict[str, Any]], text: str) -> bool:
    """``text`` has an answer and the session went idle after it."""
    return bool(_replies(events).get(text)) and events[-1]["type"] == "session.status_idle"


def _kill(server: ServerProcess) -> None:
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


@dataclass
class Round:
    number: int
    session_id: str
    text: str
    answered_after: float | None = None
    """Seconds from the restarted gateway being ready to the answer; None: never (stranded)."""


@dataclass
class Tally:
    rounds: list[Round] = field(default_factory=list)

    def stranded(self) -> list[Round]:
        return [r for r in self.rounds if r.answered_after is None]

    def summary(self) -> str:
        answered = [r.answered_after for r in self.rounds if r.answered_after is not None]
        slowest = f", slowest {max(answered):.1f}s" if answered else ""
        return f"{len(answered)} of {len(self.rounds)} rounds run ({KILLS} planned) answered after the restart{slowest}"


def test_a_message_accepted_just_before_a_kill_is_answered_after_the_restart(
    launch: Callable[[], ServerProcess], api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "answer: {{last_user_text}}"}]}] * KILLS)
    gateway = launch()
    client = sdk_client(gateway, api_key)
    agent = client.beta.agents.create(name="answers", model="claude-sonnet-4-6", system=marker)
    environment = client.beta.environments.create(name="e")

    def new_session() -> str:
        return client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id

    sessions = [new_session(), new_session()]
    tally = Tally()
    for number in range(KILLS):
        slot = number % len(sessions)
        text = f"message {number}"
        this = Round(number, sessions[slot], text)
        tally.rounds.append(this)
        client.beta.sessions.events.send(this.session_id, events=[user_message(text)])  # type: ignore[list-item]
        _kill(gateway)

        gateway = launch()
        client = sdk_client(gateway, api_key)
        ready = time.monotonic()
        deadline = ready + ANSWER_BOUND
        while time.monotonic() < deadline:
            if _finished(_events(client, this.session_id), text):
                this.answered_after = time.monotonic() - ready
                break
            time.sleep(0.1)
        else:
            # Stranded: later input would hide it (one turn answering both), so go on elsewhere.
            if len(tally.stranded()) == GIVE_UP:
                break
            sessions[slot] = new_session()

    assert not tally.stranded(), (
        f"{tally.summary()}; stranded (no answer {ANSWER_BOUND:.0f}s after the restart): "
        + ", ".join(f"round {r.number} in {r.session_id}" for r in tally.stranded())
    )
    twice = []
    for session_id in {r.session_id for r in tally.rounds}:
        for text, replies in _replies(_events(client, session_id)).items():
            if replies != [f"answer: {text}"]:
                twice.append(f"{session_id} {text!r} -> {replies}")
    assert not twice, "answered other than exactly once: " + "; ".join(twice)
