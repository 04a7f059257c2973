"""The harness owns model retries: each attempt is visible in the log, ``retry-after`` is
honoured, a hung stream times out, and an exhausted session can be resumed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import send_and_stream, strictly_valid, user_message


def _agent_session(client: anthropic.Anthropic, marker: str, environment_id: str) -> Any:
    agent = client.beta.agents.create(name="retrying", model="claude-sonnet-4-6", system=marker)
    return client.beta.sessions.create(agent=agent.id, environment_id=environment_id)


def _types(events: list[Any]) -> list[str]:
    return [event.type for event in events]


def test_overloaded_twice_then_success_is_retried_within_the_turn(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {
                "fail_first": [
                    {"status": 529, "type": "overloaded_error", "message": "Overloaded"},
                    {"status": 529, "type": "overloaded_error", "message": "Overloaded"},
                ],
                "content": [{"type": "text", "text": "third time lucky"}],
            }
        ]
    )
    session = _agent_session(client, marker, environment.id)

    streamed = send_and_stream(client, session.id, [user_message("hi")])

    assert _types(streamed) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "span.model_request_end",
        "session.error",
        "span.model_request_start",
        "span.model_request_end",
        "session.error",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    errors = [e for e in streamed if e.type == "session.error"]
    assert [(e.error.type, e.error.retry_status.type) for e in errors] == [
        ("model_overloaded_error", "retrying"),
        ("model_overloaded_error", "retrying"),
    ]
    assert streamed[-1].stop_reason.type == "end_turn"
    assert len(scripts.requests_for(marker)) == 3
    raw = client.beta.sessions.events.with_raw_response.list(session.id).http_response.json()["data"]
    strictly_valid(raw)


def test_rate_limit_retry_after_is_honoured(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {
                "fail_first": [
                    {"status": 429, "type": "rate_limit_error", "message": "slow down", "retry_after": 1}
                ],
                "content": [{"type": "text", "text": "ok"}],
            }
        ]
    )
    session = _agent_session(client, marker, environment.id)

    streamed = send_and_stream(client, session.id, [user_message("hi")])

    error = next(e for e in streamed if e.type == "session.error")
    assert error.error.type == "model_rate_limited_error" and error.error.retry_status.type == "retrying"
    starts = [e for e in streamed if e.type == "span.model_request_start"]
    waited = (starts[1].processed_at - error.processed_at).total_seconds()
    assert waited >= 0.9, f"retried after {waited:.2f}s, not after retry-after: 1"
    assert streamed[-1].stop_reason.type == "end_turn"


def test_exhausted_retries_idle_the_session_and_a_new_message_resumes_it(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    overloaded = {"status": 529, "type": "overloaded_error", "message": "Overloaded"}
    marker = scripts.add(
        [{"fail_first": [overloaded, overloaded, overloaded], "content": [{"type": "text", "text": "back"}]}]
    )
    session = _agent_session(client, marker, environment.id)

    failed = send_and_stream(client, session.id, [user_message("hi")])
    statuses = [e.error.retry_status.type for e in failed if e.type == "session.error"]
    assert statuses == ["retrying", "retrying", "exhausted"]
    assert failed[-1].stop_reason.type == "retries_exhausted"
    assert client.beta.sessions.retrieve(session.id).status == "idle"

    resumed = send_and_stream(client, session.id, [user_message("again")])
    assert next(e for e in resumed if e.type == "agent.message").content[0].text == "back"
    # The model saw both user messages, merged into one turn.
    last_request = scripts.requests_for(marker)[-1]
    assert [b["text"] for b in last_request["messages"][0]["content"]] == ["hi", "again"]


@pytest.fixture(scope="module")
def impatient_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_server.url,
        "TETHER_MODEL_STREAM_TIMEOUT": "1",
        "TETHER_MODEL_MAX_ATTEMPTS": "2",
        "TETHER_MODEL_RETRY_BASE_SECONDS": "0.01",
    }
    data_dir = tmp_path_factory.mktemp("impatient")
    with running_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env) as server:
        yield server


def test_a_hung_model_stream_times_out_and_is_retried(
    impatient_gateway: ServerProcess, api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add([{"hang_after_events": 2, "content": [{"type": "text", "text": "never"}]}])
    with anthropic.Anthropic(base_url=impatient_gateway.url, api_key=api_key, max_retries=0) as client:
        environment = client.beta.environments.create(name="e")
        session = _agent_session(client, marker, environment.id)
        began = datetime.now().astimezone()

        streamed = send_and_stream(client, session.id, [user_message("hi")])

    errors = [e for e in streamed if e.type == "session.error"]
    assert [e.error.retry_status.type for e in errors] == ["retrying", "exhausted"]
    assert all("timed out" in e.error.message for e in errors)
    assert streamed[-1].stop_reason.type == "retries_exhausted"
    assert (streamed[-1].processed_at - began).total_seconds() < 30
