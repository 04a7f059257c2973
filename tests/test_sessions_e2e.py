"""Sessions end to end: the real SDK against a gateway process, a scripted model process,
the sandbox MCP server and an upstream MCP server in its own process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts, gateway_workspaces
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import mcp_agent, send_and_stream, strictly_valid, user_message


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


def _types(events: list[Any]) -> list[str]:
    return [event.type for event in events]


def _raw_events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    return response.http_response.json()["data"]


def test_toolset_session_writes_and_reads_a_file_through_the_sandbox(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "text", "text": "Writing."},
                    {
                        "type": "tool_use",
                        "name": "write",
                        "input": {"file_path": "/workspace/out/a.txt", "content": "alpha\n"},
                    },
                ]
            },
            {"content": [{"type": "tool_use", "name": "read", "input": {"file_path": "out/a.txt"}}]},
            {"content": [{"type": "text", "text": "Read back: {{last_tool_result}}"}]},
        ]
    )
    agent = client.beta.agents.create(
        name="writer", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="write-read")

    streamed = send_and_stream(client, session.id, [user_message("write a file")])

    assert _types(streamed) == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "agent.message",
        "agent.tool_use",
        "span.model_request_end",
        "agent.tool_result",
        "span.model_request_start",
        "agent.tool_use",
        "span.model_request_end",
        "agent.tool_result",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    write_use, write_result = streamed[4], streamed[6]
    assert write_use.name == "write" and write_use.evaluated_permission == "allow"
    assert write_result.tool_use_id == write_use.id and not write_result.is_error
    assert "alpha" in streamed[-3].content[0].text
    assert streamed[-1].stop_reason.type == "end_turn"
    workspace_file = gateway_workspaces(gateway) / session.id / "out" / "a.txt"
    assert workspace_file.read_text() == "alpha\n"

    raw = _raw_events(client, session.id)
    assert [e["id"] for e in raw] == [e.id for e in streamed]
    strictly_valid(raw)

    finished = client.beta.sessions.retrieve(session.id)
    assert finished.status == "idle"
    assert finished.usage.input_tokens and finished.usage.input_tokens > 0
    ends = [e for e in raw if e["type"] == "span.model_request_end"]
    assert finished.usage.output_tokens == sum(e["model_usage"]["output_tokens"] for e in ends)

    # The model saw its tool use answered by the result, under the model's own id (kept on the event).
    second_request = scripts.requests_for(marker)[1]
    tool_result = second_request["messages"][-1]["content"][0]
    model_id = raw[4]["tether_model_id"]
    assert model_id.startswith("toolu_") and second_request["messages"][-2]["content"][-1]["id"] == model_id
    assert tool_result["type"] == "tool_result" and tool_result["tool_use_id"] == model_id


def test_mcp_tool_calls_reach_an_upstream_server_and_errors_come_back_as_error_results(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 2, "b": 40}}]},
            {"content": [{"type": "tool_use", "name": "explode", "input": {"reason": "on purpose"}}]},
            {"content": [{"type": "text", "text": "done: {{last_tool_result}}"}]},
        ]
    )
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp", name="mcp-user")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    streamed = send_and_stream(client, session.id, [user_message("add then explode")])

    uses = [e for e in streamed if e.type == "agent.mcp_tool_use"]
    results = [e for e in streamed if e.type == "agent.mcp_tool_result"]
    assert [(u.name, u.mcp_server_name) for u in uses] == [("add", "calc"), ("explode", "calc")]
    assert results[0].mcp_tool_use_id == uses[0].id and not results[0].is_error
    assert results[0].content[0].text == "42"
    assert results[1].is_error is True
    assert "exploded: on purpose" in results[1].content[0].text
    # The model was offered the upstream's tools and read the error.
    requests = scripts.requests_for(marker)
    assert {t["name"] for t in requests[0]["tools"]} == {"add", "explode", "whoami", "record", "lookup"}
    last = requests[-1]["messages"][-1]["content"][0]
    assert last["is_error"] is True and "exploded" in str(last["content"])
    strictly_valid(_raw_events(client, session.id))


def test_unreachable_mcp_server_is_reported_and_the_session_still_answers(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "I have no tools today."}]}])
    agent = mcp_agent(client, marker, "gone", "http://127.0.0.1:9/mcp", policy=None, name="offline")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    streamed = send_and_stream(client, session.id, [user_message("hi")])

    errors = [e for e in streamed if e.type == "session.error"]
    assert len(errors) == 1
    assert errors[0].error.type == "mcp_connection_failed_error"
    assert errors[0].error.mcp_server_name == "gone"
    assert streamed[-1].type == "session.status_idle" and streamed[-1].stop_reason.type == "end_turn"


def test_custom_tool_round_trip(client: anthropic.Anthropic, scripts: Scripts, environment: Any) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "lookup_order", "input": {"order_id": "A-7"}}]},
            {"content": [{"type": "text", "text": "Order status: {{last_tool_result}}"}]},
        ]
    )
    agent = client.beta.agents.create(
        name="custom",
        model="claude-sonnet-4-6",
        system=marker,
        tools=[
            {
                "type": "custom",
                "name": "lookup_order",
                "description": "Look up an order",
                "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}},
            }
        ],
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    first = send_and_stream(client, session.id, [user_message("where is A-7?")])
    use = next(e for e in first if e.type == "agent.custom_tool_use")
    assert use.name == "lookup_order" and use.input == {"order_id": "A-7"}
    idle = first[-1]
    assert idle.stop_reason.type == "requires_action" and idle.stop_reason.event_ids == [use.id]
    assert client.beta.sessions.retrieve(session.id).status == "idle"

    second = send_and_stream(
        client,
        session.id,
        [
            {
                "type": "user.custom_tool_result",
                "custom_tool_use_id": use.id,
                "content": [{"type": "text", "text": "shipped"}],
            }
        ],
    )
    assert second[0].type == "user.custom_tool_result"
    reply = next(e for e in second if e.type == "agent.message")
    assert reply.content[0].text == "Order status: shipped"
    assert second[-1].stop_reason.type == "end_turn"
    strictly_valid(_raw_events(client, session.id))


def test_always_ask_waits_for_confirmation_then_runs_or_reports_the_denial(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 1, "b": 1}}]},
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 5, "b": 5}}]},
            {"content": [{"type": "text", "text": "after denial: {{last_tool_result}}"}]},
        ]
    )
    agent = mcp_agent(
        client, marker, "calc", upstream.url + "/mcp", policy=None, name="asker"
    )  # MCP toolsets default to always_ask
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    first = send_and_stream(client, session.id, [user_message("add twice")])
    use = next(e for e in first if e.type == "agent.mcp_tool_use")
    assert use.evaluated_permission == "ask" and use.evaluation.type == "always_ask"
    assert first[-1].stop_reason.type == "requires_action" and first[-1].stop_reason.event_ids == [use.id]
    assert not [e for e in first if e.type == "agent.mcp_tool_result"]

    allowed = send_and_stream(
        client,
        session.id,
        [{"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}],
    )
    result = next(e for e in allowed if e.type == "agent.mcp_tool_result")
    assert result.mcp_tool_use_id == use.id and result.content[0].text == "2"
    second_use = next(e for e in allowed if e.type == "agent.mcp_tool_use")
    assert allowed[-1].stop_reason.event_ids == [second_use.id]

    denied = send_and_stream(
        client,
        session.id,
        [
            {
                "type": "user.tool_confirmation",
                "tool_use_id": second_use.id,
                "result": "deny",
                "deny_message": "not today",
            }
        ],
    )
    denial = next(e for e in denied if e.type == "agent.mcp_tool_result")
    assert denial.is_error is True and denial.content[0].text == "not today"
    final = next(e for e in denied if e.type == "agent.message")
    assert final.content[0].text == "after denial: not today"
    assert denied[-1].stop_reason.type == "end_turn"


def test_stream_resumes_from_last_event_id_with_every_event_exactly_once(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "tool_use", "name": "write", "input": {"file_path": "x.txt", "content": "x"}}
                ]
            },
            {"content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        ]
    )
    agent = client.beta.agents.create(
        name="resume", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    # Read only the first three events, then drop the connection.
    head: list[Any] = []
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[user_message("go")])  # type: ignore[list-item]
        for event in stream:
            head.append(event)
            if len(head) == 3:
                break

    # Reconnect from the last event seen; the log replays everything after it.
    tail: list[Any] = []
    with client.beta.sessions.events.stream(
        session.id, extra_headers={"Last-Event-ID": head[-1].id}
    ) as stream:
        for event in stream:
            tail.append(event)
            if event.type == "session.status_idle":
                break

    combined = [e.id for e in head + tail]
    logged = [e["id"] for e in _raw_events(client, session.id)]
    assert combined == logged
    assert len(set(combined)) == len(combined)


def test_interrupt_while_waiting_for_a_custom_tool_idles_the_session_and_a_new_message_continues(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "ask_human", "input": {}}]},
            {"content": [{"type": "text", "text": "continuing after: {{last_user_text}}"}]},
        ]
    )
    agent = client.beta.agents.create(
        name="interruptible",
        model="claude-sonnet-4-6",
        system=marker,
        tools=[
            {"type": "custom", "name": "ask_human", "description": "Ask", "input_schema": {"type": "object"}}
        ],
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    first = send_and_stream(client, session.id, [user_message("start")])
    assert first[-1].stop_reason.type == "requires_action"

    interrupted = send_and_stream(client, session.id, [{"type": "user.interrupt"}])
    # The interrupt closes the waiting custom tool use with an error result in the log.
    assert _types(interrupted) == ["user.interrupt", "user.custom_tool_result", "session.status_idle"]
    assert interrupted[1].is_error and interrupted[-1].stop_reason.type == "end_turn"

    resumed = send_and_stream(client, session.id, [user_message("never mind, carry on")])
    reply = next(e for e in resumed if e.type == "agent.message")
    assert reply.content[0].text == "continuing after: never mind, carry on"
    # The abandoned tool use was closed with an error result, so the model saw no orphan.
    request = scripts.requests_for(marker)[-1]
    closing = request["messages"][-1]["content"]
    assert closing[0]["type"] == "tool_result" and closing[0]["is_error"] is True
    # The user's text ends the conversation, so it carries the rolling prompt-cache mark.
    assert closing[1] == {
        "type": "text",
        "text": "never mind, carry on",
        "cache_control": {"type": "ephemeral"},
    }


def test_a_non_retryable_model_error_is_recorded_and_terminates_the_session(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {
                "fail_first": [{"status": 400, "type": "invalid_request_error", "message": "boom"}],
                "content": [{"type": "text", "text": "never sent"}],
            }
        ]
    )
    agent = client.beta.agents.create(name="flaky", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    failed = send_and_stream(client, session.id, [user_message("hello")], until="session.status_terminated")
    error = next(e for e in failed if e.type == "session.error")
    assert error.error.type == "model_request_failed_error" and "boom" in error.error.message
    assert error.error.retry_status.type == "terminal"
    assert len([e for e in failed if e.type == "span.model_request_start"]) == 1
    end = next(e for e in failed if e.type == "span.model_request_end")
    assert end.is_error is True
    assert failed[-1].type == "session.status_terminated"
    assert client.beta.sessions.retrieve(session.id).status == "terminated"

    with pytest.raises(anthropic.BadRequestError, match="terminated"):
        client.beta.sessions.events.send(session.id, events=[user_message("try again")])  # type: ignore[list-item]


def test_several_pending_confirmations_in_one_turn_are_answered_together(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "tool_use", "name": "add", "input": {"a": 1, "b": 2}},
                    {"type": "tool_use", "name": "add", "input": {"a": 3, "b": 4}},
                ]
            },
            {"content": [{"type": "text", "text": "results: {{last_tool_result}}"}]},
        ]
    )
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp", policy=None, name="double-asker")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    first = send_and_stream(client, session.id, [user_message("two sums")])
    uses = [e for e in first if e.type == "agent.mcp_tool_use"]
    assert first[-1].stop_reason.event_ids == [u.id for u in uses]

    # Answering only one keeps the session waiting on the other.
    partial = send_and_stream(
        client, session.id, [{"type": "user.tool_confirmation", "tool_use_id": uses[0].id, "result": "allow"}]
    )
    assert partial[-1].stop_reason.type == "requires_action"
    assert partial[-1].stop_reason.event_ids == [uses[1].id]
    assert next(e for e in partial if e.type == "agent.mcp_tool_result").content[0].text == "3"

    rest = send_and_stream(
        client,
        session.id,
        [
            {
                "type": "user.tool_confirmation",
                "tool_use_id": uses[1].id,
                "result": "deny",
                "deny_message": "no",
            }
        ],
    )
    assert next(e for e in rest if e.type == "agent.message").content[0].text == "results: 3\nno"
    assert rest[-1].stop_reason.type == "end_turn"
