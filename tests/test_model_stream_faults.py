"""A model response counts only when its stream completed (``message_stop`` with a
``stop_reason``) and its tool inputs are whole JSON. A broken stream is a failed attempt:
retried, its request span closed as an error, and nothing of it logged or executed. A
non-retryable model error terminates the session, as the SDK's ``terminal`` status says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from gateway.harness.model import ModelCallFailed, call_model
from tests.conftest import Scripts, gateway_workspaces
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import mcp_agent, strictly_valid, user_message

TEXT = "The complete sentence, every word of it, from the first to the last."


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


def _session(client: anthropic.Anthropic, marker: str, environment_id: str, **agent: Any) -> Any:
    created = client.beta.agents.create(name="faulty", model="claude-sonnet-4-6", system=marker, **agent)
    return client.beta.sessions.create(agent=created.id, environment_id=environment_id)


def _send(client: anthropic.Anthropic, session_id: str, text: str) -> list[Any]:
    """Send a message and collect the streamed events until the session idles or terminates
    (either ends every turn, so a wrong outcome fails the test instead of hanging it)."""
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id) as stream:
        client.beta.sessions.events.send(session_id, events=[user_message(text)])  # type: ignore[list-item]
        for event in stream:
            seen.append(event)
            if event.type in ("session.status_idle", "session.status_terminated"):
                break
    return seen


def _log(client: anthropic.Anthropic, session_id: str) -> list[Any]:
    """The whole session log, each event validated strictly against the SDK's models."""
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    return strictly_valid(response.http_response.json()["data"])


def _of(events: list[Any], event_type: str) -> list[Any]:
    return [event for event in events if event.type == event_type]


def _retry_statuses(events: list[Any]) -> list[str]:
    return [event.error.retry_status.type for event in _of(events, "session.error")]


def _assert_every_request_closed(events: list[Any], failed: int) -> None:
    """Each ``span.model_request_start`` has one end; the first ``failed`` ends are errors."""
    starts = [event.id for event in _of(events, "span.model_request_start")]
    ends = _of(events, "span.model_request_end")
    assert [end.model_request_start_id for end in ends] == starts
    assert [end.is_error for end in ends] == [True] * failed + [False] * (len(ends) - failed)


def test_a_stream_that_ends_before_message_stop_is_retried_and_only_the_whole_reply_is_kept(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    # Four events: message_start, content_block_start and two of the three text deltas.
    marker = scripts.add(
        [{"truncate_first": 1, "truncate_after_events": 4, "content": [{"type": "text", "text": TEXT}]}]
    )
    session = _session(client, marker, environment.id)

    streamed = _send(client, session.id, "hi")

    assert [event.type for event in streamed] == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "span.model_request_end",
        "session.error",
        "span.model_request_start",
        "agent.message",
        "span.model_request_end",
        "session.status_idle",
    ]
    events = _log(client, session.id)
    (error,) = _of(events, "session.error")
    assert error.error.type == "model_request_failed_error"
    assert error.error.retry_status.type == "retrying"
    assert "ended before the message was complete" in error.error.message
    (message,) = _of(events, "agent.message")
    assert [block.text for block in message.content] == [TEXT]
    _assert_every_request_closed(events, failed=1)
    assert streamed[-1].stop_reason.type == "end_turn"
    assert len(scripts.requests_for(marker)) == 2


def test_a_tool_call_cut_off_mid_input_is_not_run_and_runs_once_when_it_arrives_whole(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    command = "echo ran >> /workspace/ledger.txt && cat /workspace/ledger.txt"
    tool_input = {"command": command, "timeout_ms": 60000}
    marker = scripts.add(
        [
            {
                # message_start, content_block_start and the first third of the input JSON.
                "truncate_first": 1,
                "truncate_after_events": 3,
                "content": [{"type": "tool_use", "name": "bash", "input": tool_input}],
            },
            {"content": [{"type": "text", "text": "ledger: {{last_tool_result}}"}]},
        ]
    )
    session = _session(client, marker, environment.id, tools=[{"type": "agent_toolset_20260401"}])

    streamed = _send(client, session.id, "run it")

    events = _log(client, session.id)
    assert _retry_statuses(events) == ["retrying"]
    (use,) = _of(events, "agent.tool_use")
    assert use.name == "bash" and use.input == tool_input
    (result,) = _of(events, "agent.tool_result")
    assert result.tool_use_id == use.id and not result.is_error
    assert (gateway_workspaces(gateway) / session.id / "ledger.txt").read_text() == "ran\n"
    (message,) = _of(events, "agent.message")
    assert message.content[0].text.strip() == "ledger: ran"
    _assert_every_request_closed(events, failed=1)
    assert streamed[-1].stop_reason.type == "end_turn"


def test_a_stream_cut_off_on_every_attempt_exhausts_the_retries_and_keeps_nothing(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    # By default the stream stops right before message_delta: all the text, never the end.
    marker = scripts.add([{"truncate_first": 99, "content": [{"type": "text", "text": TEXT}]}])
    session = _session(client, marker, environment.id)

    streamed = _send(client, session.id, "hi")

    events = _log(client, session.id)
    assert _retry_statuses(events) == ["retrying", "retrying", "exhausted"]
    assert all(
        "ended before the message was complete" in e.error.message for e in _of(events, "session.error")
    )
    assert _of(events, "agent.message") == []
    _assert_every_request_closed(events, failed=3)
    assert streamed[-1].type == "session.status_idle"
    assert streamed[-1].stop_reason.type == "retries_exhausted"
    assert client.beta.sessions.retrieve(session.id).status == "idle"


def test_malformed_tool_input_json_is_retried_and_the_whole_call_runs(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {
                "malformed_tool_json_first": 1,
                "content": [{"type": "tool_use", "name": "add", "input": {"a": 2, "b": 40}}],
            },
            {"content": [{"type": "text", "text": "sum: {{last_tool_result}}"}]},
        ]
    )
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    streamed = _send(client, session.id, "add")

    events = _log(client, session.id)
    (error,) = _of(events, "session.error")
    assert error.error.type == "model_request_failed_error"
    assert error.error.retry_status.type == "retrying"
    assert "not valid JSON" in error.error.message
    (use,) = _of(events, "agent.mcp_tool_use")
    assert use.input == {"a": 2, "b": 40}
    (result,) = _of(events, "agent.mcp_tool_result")
    assert result.content[0].text == "42" and not result.is_error
    assert _of(events, "agent.message")[-1].content[0].text == "sum: 42"
    _assert_every_request_closed(events, failed=1)
    assert streamed[-1].stop_reason.type == "end_turn"


def test_malformed_tool_input_json_on_every_attempt_exhausts_the_retries_and_closes_every_span(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {
                "malformed_tool_json_first": 99,
                "content": [{"type": "tool_use", "name": "add", "input": {"a": 2, "b": 40}}],
            }
        ]
    )
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    streamed = _send(client, session.id, "add")

    events = _log(client, session.id)
    errors = _of(events, "session.error")
    assert [e.error.type for e in errors] == ["model_request_failed_error"] * 3
    assert _retry_statuses(events) == ["retrying", "retrying", "exhausted"]
    assert all("not valid JSON" in e.error.message for e in errors)
    assert _of(events, "agent.mcp_tool_use") == [] and _of(events, "agent.message") == []
    _assert_every_request_closed(events, failed=3)
    assert streamed[-1].stop_reason.type == "retries_exhausted"


def test_a_connection_reset_mid_stream_is_retried_and_the_error_names_the_cause(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [{"reset_first": 1, "reset_after_events": 3, "content": [{"type": "text", "text": TEXT}]}]
    )
    session = _session(client, marker, environment.id)

    streamed = _send(client, session.id, "hi")

    events = _log(client, session.id)
    (error,) = _of(events, "session.error")
    assert error.error.retry_status.type == "retrying"
    assert error.error.message.startswith("the model stream broke off: RemoteProtocolError (")
    assert "peer closed connection" in error.error.message
    (message,) = _of(events, "agent.message")
    assert message.content[0].text == TEXT
    _assert_every_request_closed(events, failed=1)
    assert streamed[-1].stop_reason.type == "end_turn"


def test_a_non_retryable_model_error_terminates_the_session(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {
                "fail_first": [
                    {"status": 400, "type": "invalid_request_error", "message": "prompt is too long"}
                ],
                "content": [{"type": "text", "text": "never sent"}],
            }
        ]
    )
    session = _session(client, marker, environment.id)

    streamed = _send(client, session.id, "hi")

    assert [event.type for event in streamed] == [
        "user.message",
        "session.status_running",
        "span.model_request_start",
        "span.model_request_end",
        "session.error",
        "session.status_terminated",
    ]
    events = _log(client, session.id)
    (error,) = _of(events, "session.error")
    assert error.error.type == "model_request_failed_error"
    assert error.error.retry_status.type == "terminal"
    assert error.error.message == "HTTP 400: prompt is too long"
    assert _of(events, "session.status_idle") == []
    _assert_every_request_closed(events, failed=1)
    assert client.beta.sessions.retrieve(session.id).status == "terminated"
    assert len(scripts.requests_for(marker)) == 1
    with pytest.raises(anthropic.BadRequestError, match="terminated"):
        client.beta.sessions.events.send(session.id, events=[user_message("again")])  # type: ignore[list-item]


# call_model against hand-written streams, for what the scripted model does not send -------


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def _client_for(body: bytes) -> anthropic.AsyncAnthropic:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": "text/event-stream"})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return anthropic.AsyncAnthropic(
        base_url="http://model.test", api_key="x", max_retries=0, http_client=http
    )


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
}
REQUEST = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def _tool_stream(partial_json: str, stop_reason: str = "tool_use") -> bytes:
    return _sse(
        MESSAGE_START,
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": partial_json},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
    )


async def _failure(body: bytes) -> ModelCallFailed:
    async with _client_for(body) as client:
        with pytest.raises(ModelCallFailed) as caught:
            await call_model(client, REQUEST)
    return caught.value


@pytest.mark.anyio
async def test_a_complete_tool_stream_is_returned_with_its_input_parsed_exactly() -> None:
    async with _client_for(_tool_stream('{"command": "ls", "timeout_ms": 60000}')) as client:
        result = await call_model(client, REQUEST)

    assert result.stop_reason == "tool_use"
    assert result.content == [
        {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "ls", "timeout_ms": 60000}}
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("partial_json", "stop_reason", "expected"),
    [
        # The SDK's partial parser would accept all three as {"command": "ls"}.
        ('{"command": "ls"}}', "tool_use", "not valid JSON"),
        ('{"command": "ls", "timeout_ms": 6', "max_tokens", "not valid JSON"),
        ('{"command": "ls', "max_tokens", "hit max_tokens"),
    ],
)
async def test_tool_input_that_is_not_whole_json_fails_the_attempt_even_after_message_stop(
    partial_json: str, stop_reason: str, expected: str
) -> None:
    failure = await _failure(_tool_stream(partial_json, stop_reason))

    assert failure.error_type == "model_request_failed_error" and failure.status is None
    assert expected in failure.message and "'bash'" in failure.message


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("error", "error_type", "status"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, "model_overloaded_error", 529),
        ({"type": "api_error", "message": "Internal"}, "model_request_failed_error", 500),
        ({"type": "invalid_request_error", "message": "bad"}, "model_request_failed_error", 400),
    ],
)
async def test_an_error_event_inside_the_stream_is_classified_by_its_type(
    error: dict[str, str], error_type: str, status: int
) -> None:
    failure = await _failure(_sse(MESSAGE_START, {"type": "error", "error": error}))

    assert (failure.error_type, failure.status) == (error_type, status)
    assert failure.message == f"the model stream reported {error['type']}: {error['message']}"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "ended without message_stop"),
        (_sse(MESSAGE_START, {"type": "message_stop"}), "message_stop without a stop_reason"),
    ],
)
async def test_a_stream_without_its_ending_fails_the_attempt(body: bytes, expected: str) -> None:
    failure = await _failure(body)

    assert "ended before the message was complete" in failure.message and expected in failure.message
