"""Controlling a session between and during turns, through the SDK: ``sessions.update(agent=...)``
applies from the next turn, an interrupt leaves no tool use without a result, and deleting a
session ends its open streams with ``session.deleted``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gateway.harness.interrupts import NO_CLIENT_RESULT, UNCONFIRMED
from tests.conftest import Scripts
from tests.support import restarts
from tests.support.processes import ServerProcess
from tests.support.restarts import sdk_client
from tests.support.sessions import STREAM_EVENT, send_and_stream, strictly_valid, user_message

# Both backends, a gateway started per test on the backend's database.
database_url = restarts.database_url
launch = restarts.launch

PROMPT = 5.0
"""Bound for ``session.deleted`` to arrive: well under the stream's 15 s keepalive, the only
other way a stream notices a vanished session."""
LOOKUP = {
    "type": "custom",
    "name": "lookup",
    "description": "Look something up",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
}
USES_TO_RESULTS = {
    "agent.tool_use": ("agent.tool_result", "tool_use_id"),
    "agent.mcp_tool_use": ("agent.mcp_tool_result", "mcp_tool_use_id"),
    "agent.custom_tool_use": ("user.custom_tool_result", "custom_tool_use_id"),
}


def _raw_events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    data: list[dict[str, Any]] = response.http_response.json()["data"]
    return data


def _dangling(events: list[dict[str, Any]]) -> list[str]:
    """Tool uses in the log without a result event."""
    answered = {
        event[link]
        for event in events
        for result_type, link in USES_TO_RESULTS.values()
        if event["type"] == result_type
    }
    return [e["id"] for e in events if e["type"] in USES_TO_RESULTS and e["id"] not in answered]


def _session(client: anthropic.Anthropic, environment: Any, marker: str, **agent: Any) -> str:
    created = client.beta.agents.create(name="controlled", model="claude-sonnet-4-6", system=marker, **agent)
    return client.beta.sessions.create(agent=created.id, environment_id=environment.id).id


# sessions.update(agent=...) ------------------------------------------------------------------


def test_an_agent_update_between_turns_applies_from_the_next_model_request(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [{"content": [{"type": "text", "text": "one"}]}, {"content": [{"type": "text", "text": "two"}]}]
    )
    agent = client.beta.agents.create(name="tool-less", model="claude-sonnet-4-6", system=marker)
    session_id = client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id
    send_and_stream(client, session_id, [user_message("first")])

    with client.beta.sessions.events.stream(session_id) as stream:
        updated = client.beta.sessions.update(session_id, agent={"tools": [LOOKUP]})  # type: ignore[list-item]
        announced = next(e for e in stream if e.type == "session.updated")
    send_and_stream(client, session_id, [user_message("second")])

    assert [t.name for t in updated.agent.tools] == ["lookup"]  # type: ignore[union-attr]
    assert announced.agent is not None and announced.agent.model_dump() == updated.agent.model_dump()
    assert announced.title is None and announced.metadata is None
    first, second = scripts.requests_for(marker)
    assert not first.get("tools")
    assert [tool["name"] for tool in second["tools"]] == ["lookup"]
    unchanged = client.beta.agents.retrieve(agent.id)
    assert unchanged.tools == [] and unchanged.version == 1  # the session's snapshot changed, not the agent
    strictly_valid(_raw_events(client, session_id))


def test_session_updated_carries_only_what_changed_and_only_when_something_did(
    client: anthropic.Anthropic, environment: Any
) -> None:
    session_id = _session(client, environment, "no-turns")

    client.beta.sessions.update(session_id, title="renamed", metadata={"team": "ops"})
    client.beta.sessions.update(session_id, title="renamed")  # no change: nothing to announce

    updates = [e for e in _raw_events(client, session_id) if e["type"] == "session.updated"]
    assert len(updates) == 1
    assert {k: v for k, v in updates[0].items() if k not in ("id", "processed_at")} == {
        "type": "session.updated",
        "title": "renamed",
        "metadata": {"team": "ops"},
    }


def test_an_agent_update_is_checked_like_an_agent(client: anthropic.Anthropic, environment: Any) -> None:
    session_id = _session(client, environment, "checked")
    server = {"type": "url", "name": "docs", "url": "https://docs.example.com/mcp"}

    with pytest.raises(anthropic.BadRequestError, match="not referenced by any mcp_toolset"):
        client.beta.sessions.update(session_id, agent={"mcp_servers": [server]})  # type: ignore[list-item]
    with pytest.raises(anthropic.BadRequestError, match="is not one of mcp_servers"):
        client.beta.sessions.update(
            session_id,
            agent={"tools": [{"type": "mcp_toolset", "mcp_server_name": "docs"}]},  # type: ignore[list-item]
        )
    with pytest.raises(anthropic.BadRequestError, match="system"):
        client.beta.sessions.update(session_id, extra_body={"agent": {"system": "be someone else"}})
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.update("sesn_missing", agent={"tools": []})

    toolset = {"type": "mcp_toolset", "mcp_server_name": "docs"}
    both = client.beta.sessions.update(session_id, agent={"mcp_servers": [server], "tools": [toolset]})  # type: ignore[list-item]
    assert [s.name for s in both.agent.mcp_servers] == ["docs"]
    # The default the agent API fills in applies here too: MCP tools ask before they run.
    assert both.agent.tools[0].default_config.permission_policy.type == "always_ask"  # type: ignore[union-attr]
    assert not [e for e in _raw_events(client, session_id) if e["type"] == "session.updated"][1:]


def test_the_agent_cannot_change_while_a_turn_runs(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add([{"hang_after_events": 1, "content": [{"type": "text", "text": "never"}]}])
    session_id = _session(client, environment, marker)

    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(session_id, events=[user_message("think long")])  # type: ignore[list-item]
        for event in stream:
            if event.type == "span.model_request_start":
                with pytest.raises(anthropic.ConflictError, match="running"):
                    client.beta.sessions.update(session_id, agent={"tools": [LOOKUP]})  # type: ignore[list-item]
                client.beta.sessions.events.send(session_id, events=[{"type": "user.interrupt"}])
            if event.type == "session.status_idle":
                break

    updated = client.beta.sessions.update(session_id, agent={"tools": [LOOKUP]})  # type: ignore[list-item]
    assert [t.name for t in updated.agent.tools] == ["lookup"]  # type: ignore[union-attr]


# Interrupts ----------------------------------------------------------------------------------


def test_interrupting_a_confirmation_wait_closes_the_tool_use_and_refuses_a_late_confirmation(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "bash", "input": {"command": "echo hi"}}]},
            {"content": [{"type": "text", "text": "the model saw: {{last_tool_result}}"}]},
        ]
    )
    asking = {
        "type": "agent_toolset_20260401",
        "default_config": {"permission_policy": {"type": "always_ask"}},
    }
    session_id = _session(client, environment, marker, tools=[asking])
    first = send_and_stream(client, session_id, [user_message("run it")])
    use = next(e for e in first if e.type == "agent.tool_use")
    assert first[-1].stop_reason.type == "requires_action"

    interrupted = send_and_stream(client, session_id, [{"type": "user.interrupt"}])

    result = next(e for e in interrupted if e.type == "agent.tool_result")
    assert result.tool_use_id == use.id and result.is_error and result.content[0].text == UNCONFIRMED
    assert interrupted[-1].type == "session.status_idle" and interrupted[-1].stop_reason.type == "end_turn"
    logged = _raw_events(client, session_id)
    assert _dangling(logged) == []
    strictly_valid(logged)
    with pytest.raises(anthropic.BadRequestError, match="already has a result") as late:
        client.beta.sessions.events.send(
            session_id, events=[{"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}]
        )
    assert UNCONFIRMED in str(late.value)
    reply = next(
        e for e in send_and_stream(client, session_id, [user_message("go on")]) if e.type == "agent.message"
    )
    assert reply.content[0].text == f"the model saw: {UNCONFIRMED}"


def test_interrupting_a_custom_tool_wait_records_its_result_and_refuses_a_late_one(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add([{"content": [{"type": "tool_use", "name": "lookup", "input": {"q": "x"}}]}])
    session_id = _session(client, environment, marker, tools=[LOOKUP])
    use = next(
        e
        for e in send_and_stream(client, session_id, [user_message("look")])
        if e.type == "agent.custom_tool_use"
    )

    interrupted = send_and_stream(client, session_id, [{"type": "user.interrupt"}])

    result = next(e for e in interrupted if e.type == "user.custom_tool_result")
    assert result.custom_tool_use_id == use.id and result.is_error
    assert result.content is not None and result.content[0].text == NO_CLIENT_RESULT  # type: ignore[union-attr]
    assert _dangling(_raw_events(client, session_id)) == []
    with pytest.raises(anthropic.BadRequestError, match="already has a result"):
        client.beta.sessions.events.send(
            session_id,
            events=[
                {
                    "type": "user.custom_tool_result",
                    "custom_tool_use_id": use.id,
                    "content": [{"type": "text", "text": "too late"}],
                }
            ],
        )


# session.deleted -----------------------------------------------------------------------------


def _delete_while_streaming(
    client: anthropic.Anthropic, session_id: str, **stream_args: Any
) -> tuple[list[Any], float]:
    """Delete the session while a stream of it is open; the stream's events and how long it
    took to end after the delete."""
    with client.beta.sessions.events.stream(session_id, **stream_args) as stream:
        client.beta.sessions.delete(session_id)
        deleted_at = time.monotonic()
        seen = list(stream)
    return seen, time.monotonic() - deleted_at


def test_deleting_a_session_ends_its_open_streams_with_session_deleted(
    launch: Any, scripts: Scripts, api_key: str
) -> None:
    client = sdk_client(launch(), api_key)
    environment = client.beta.environments.create(name="doomed")
    marker = scripts.add([{"content": [{"type": "text", "text": "hello"}]}])
    used = _session(client, environment, marker)
    send_and_stream(client, used, [user_message("hi")])
    fresh, previewed = _session(client, environment, marker), _session(client, environment, marker)

    for session_id, stream_args in (
        (used, {}),
        (fresh, {}),
        (previewed, {"event_deltas": ["agent.message"]}),
    ):
        seen, took = _delete_while_streaming(client, session_id, **stream_args)

        assert [e.type for e in seen] == ["session.deleted"], session_id
        assert took < PROMPT, f"the stream noticed the delete after {took:.1f}s"
        STREAM_EVENT.validate_python(seen[0].model_dump(mode="json"))
        with pytest.raises(anthropic.NotFoundError):
            client.beta.sessions.events.list(session_id)


@pytest.fixture
def two_gateways_on_postgres(
    tmp_path: Path, model_server: ServerProcess, api_key: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    with restarts.two_gateways_on_postgres(tmp_path, model_server.url, api_key) as gateways:
        yield gateways


def test_a_delete_through_another_gateway_ends_the_stream_on_postgres(
    two_gateways_on_postgres: tuple[ServerProcess, ServerProcess], api_key: str
) -> None:
    streaming, deleting = (sdk_client(server, api_key) for server in two_gateways_on_postgres)
    environment = streaming.beta.environments.create(name="shared")
    session_id = _session(streaming, environment, "cross-process")

    with streaming.beta.sessions.events.stream(session_id) as stream:
        deleting.beta.sessions.delete(session_id)
        deleted_at = time.monotonic()
        seen = list(stream)

    assert [e.type for e in seen] == ["session.deleted"]
    assert time.monotonic() - deleted_at < PROMPT
