"""The scripted model, run as a real child process and driven through the real ``anthropic`` SDK.

The point of the scripted model is to be indistinguishable from Claude to the
harness, so these tests go over HTTP with the SDK's own streaming accumulator,
error mapping and timeouts rather than calling the app in-process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2  # the SDK's own HTTP client, used here for the admin endpoints
import pytest
from anthropic.types import MessageParam

from tests.support.processes import ServerProcess, running_server

MODEL = "claude-scripted"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with running_server(["model", "--port", "0"]) as process:
        yield process


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=server.url, api_key="x", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def admin(server: ServerProcess) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=server.url) as http:
        yield http


def marker() -> str:
    """A unique match string, so scripts added by one test never answer another's requests."""
    return f"marker-{uuid.uuid4().hex}"


async def add_script(admin: httpx2.AsyncClient, match: str, turns: list[dict[str, Any]]) -> None:
    response = await admin.post("/_scripts", json={"match": match, "turns": turns})
    assert response.status_code == 201, response.text


def user(text: str) -> MessageParam:
    return {"role": "user", "content": text}


def assistant(text: str) -> MessageParam:
    return {"role": "assistant", "content": text}


def only_text(message: anthropic.types.Message) -> str:
    """The text of a reply that must consist of exactly one text block."""
    assert len(message.content) == 1 and message.content[0].type == "text", message.content
    return message.content[0].text


def expected_input_tokens(messages: list[MessageParam]) -> int:
    return max(1, len(json.dumps(messages)) // 4)


@pytest.mark.anyio
async def test_streamed_tool_use_round_trip(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    match = marker()
    tool_input = {"file_path": "/workspace/a.txt", "content": "hi"}
    await add_script(
        admin,
        match,
        [
            {
                "content": [
                    {"type": "thinking", "thinking": "The user wants a file written."},
                    {"type": "text", "text": "I'll write it."},
                    {"type": "tool_use", "name": "write", "input": tool_input},
                ]
            },
            {"content": [{"type": "text", "text": "The file says: {{last_tool_result}}"}]},
        ],
    )
    messages: list[MessageParam] = [user(f"write a file {match}")]

    event_types: list[str] = []
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=messages) as stream:
        async for event in stream:
            event_types.append(event.type)
        first = await stream.get_final_message()

    assert event_types[0] == "message_start" and event_types[-1] == "message_stop"
    assert event_types.count("text") > 1, "text should arrive in several deltas"
    assert event_types.count("input_json") > 1, "tool input should arrive in several deltas"
    assert first.id.startswith("msg_") and first.model == MODEL
    assert [block.type for block in first.content] == ["thinking", "text", "tool_use"]
    thinking, text, tool_use = first.content
    assert thinking.type == "thinking" and thinking.thinking == "The user wants a file written."
    assert thinking.signature
    assert text.type == "text" and text.text == "I'll write it."
    assert tool_use.type == "tool_use" and tool_use.name == "write"
    assert tool_use.input == tool_input and tool_use.id.startswith("toolu_")
    assert first.stop_reason == "tool_use"
    output_chars = len("The user wants a file written.") + len("I'll write it.") + len(json.dumps(tool_input))
    assert first.usage.input_tokens == expected_input_tokens(messages)
    assert first.usage.output_tokens == output_chars // 4
    assert first.usage.cache_read_input_tokens == 0

    messages += [
        first.to_param(),
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "hi"}],
        },
    ]
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=messages) as stream:
        second = await stream.get_final_message()

    assert only_text(second) == "The file says: hi"
    assert second.stop_reason == "end_turn"

    sent = [body for body in (await admin.get("/_requests")).json() if match in json.dumps(body)]
    assert len(sent) == 2 and all(body["stream"] is True for body in sent)
    assert sent[1]["messages"][2]["content"][0]["tool_use_id"] == tool_use.id


@pytest.mark.anyio
async def test_non_streaming_create(client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient) -> None:
    match = marker()
    await add_script(
        admin,
        match,
        [{"content": [{"type": "text", "text": "plain reply"}], "usage": {"output_tokens": 42}}],
    )
    messages = [user(f"hello {match}")]

    message = await client.messages.create(model=MODEL, max_tokens=100, messages=messages)

    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert only_text(message) == "plain reply"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 42
    assert message.usage.input_tokens == expected_input_tokens(messages)


@pytest.mark.anyio
async def test_turn_is_the_number_of_assistant_messages(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    match = marker()
    turns: list[dict[str, Any]] = [{"content": [{"type": "text", "text": f"turn {n}"}]} for n in range(3)]
    turns[1]["stop_reason"] = "max_tokens"
    await add_script(admin, match, turns)
    history = [user(match), assistant("a"), user("b"), assistant("c"), user("d")]

    async def reply_to(messages: list[MessageParam]) -> anthropic.types.Message:
        return await client.messages.create(model=MODEL, max_tokens=10, messages=messages)

    second = await reply_to(history[:3])
    third = await reply_to(history)
    first = await reply_to(history[:1])
    exhausted = await reply_to([*history, assistant("e"), user("f")])

    assert [only_text(m) for m in (first, second, third, exhausted)] == [
        "turn 0",
        "turn 1",
        "turn 2",
        "(script exhausted)",
    ]
    assert second.stop_reason == "max_tokens" and exhausted.stop_reason == "end_turn"


@pytest.mark.anyio
async def test_templates_fill_text_and_nested_tool_input(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    match = marker()
    await add_script(
        admin,
        match,
        [
            {"content": [{"type": "text", "text": "ok"}]},
            {
                "content": [
                    {"type": "text", "text": "results: {{last_tool_result}} / said: {{last_user_text}}"},
                    {
                        "type": "tool_use",
                        "name": "note",
                        "input": {"args": [{"text": "{{last_user_text}}"}], "count": 2},
                    },
                ]
            },
        ],
    )
    messages: list[MessageParam] = [
        user(match),
        assistant("ok"),
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "one"}],
                },
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "two"},
                {"type": "text", "text": "carry on"},
            ],
        },
    ]

    async with client.messages.stream(model=MODEL, max_tokens=10, messages=messages) as stream:
        message = await stream.get_final_message()

    text, tool_use = message.content
    assert text.type == "text" and text.text == "results: one\ntwo / said: carry on"
    assert tool_use.type == "tool_use" and tool_use.input == {"args": [{"text": "carry on"}], "count": 2}


@pytest.mark.anyio
async def test_fail_first_errors_then_success(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    match = marker()
    await add_script(
        admin,
        match,
        [
            {
                "fail_first": [
                    {"status": 529, "type": "overloaded_error", "message": "Overloaded"},
                    {"status": 429, "type": "rate_limit_error", "message": "slow down", "retry_after": 1},
                ],
                "content": [{"type": "text", "text": "finally"}],
            }
        ],
    )
    messages = [user(match)]

    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await client.messages.create(model=MODEL, max_tokens=10, messages=messages)
    assert overloaded.value.status_code == 529
    assert overloaded.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }

    with pytest.raises(anthropic.RateLimitError) as limited:
        async with client.messages.stream(model=MODEL, max_tokens=10, messages=messages) as stream:
            await stream.get_final_message()
    assert limited.value.status_code == 429
    assert limited.value.response.headers["retry-after"] == "1"
    assert "slow down" in limited.value.message

    message = await client.messages.create(model=MODEL, max_tokens=10, messages=messages)
    assert only_text(message) == "finally"

    sent = [body for body in (await admin.get("/_requests")).json() if match in json.dumps(body)]
    assert len(sent) == 3, "failed attempts are recorded too"


@pytest.mark.anyio
async def test_match_priority(client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient) -> None:
    shared, in_system = marker(), marker()
    await add_script(admin, shared, [{"content": [{"type": "text", "text": "older"}]}])
    await add_script(admin, shared, [{"content": [{"type": "text", "text": "newer"}]}])
    await add_script(admin, in_system, [{"content": [{"type": "text", "text": "system wins"}]}])

    async def reply_text(**kwargs: Any) -> str:
        message = await client.messages.create(model=MODEL, max_tokens=10, **kwargs)
        return only_text(message)

    assert await reply_text(messages=[user(shared)]) == "newer"
    # The system prompt is searched before the first user message, whichever script is newer.
    system_blocks = [{"type": "text", "text": "preamble"}, {"type": "text", "text": in_system}]
    assert await reply_text(system=system_blocks, messages=[user(shared)]) == "system wins"
    # Only the *first* user message selects a script.
    assert await reply_text(messages=[user("hi"), assistant("x"), user(shared)]) == "You said: " + shared


@pytest.mark.anyio
async def test_unmatched_request_is_echoed(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=10, messages=[user(f"nothing scripted {uuid.uuid4().hex}")]
    )
    assert only_text(message).startswith("You said: nothing scripted ")
    assert message.stop_reason == "end_turn"


def test_script_file_and_wildcard_has_lowest_priority(tmp_path: Path) -> None:
    """Uses its own server: a ``*`` script would answer every other test's unmatched requests."""
    script_file = tmp_path / "script.json"
    scripts = [
        {"match": "specific", "turns": [{"content": [{"type": "text", "text": "specific reply"}]}]},
        {"match": "*", "turns": [{"content": [{"type": "text", "text": "fallback"}]}]},
    ]
    script_file.write_text(json.dumps({"scripts": scripts}))

    with (
        running_server(["model", "--port", "0", "--script", str(script_file)]) as process,
        anthropic.Anthropic(base_url=process.url, api_key="x", max_retries=0) as sdk,
    ):
        specific = sdk.messages.create(model=MODEL, max_tokens=10, messages=[user("a specific ask")])
        other = sdk.messages.create(model=MODEL, max_tokens=10, messages=[user("anything else")])

    assert only_text(specific) == "specific reply"
    assert only_text(other) == "fallback"


@pytest.mark.anyio
async def test_hang_after_events_times_out_the_client(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    match = marker()
    await add_script(
        admin, match, [{"hang_after_events": 3, "content": [{"type": "text", "text": "never finishes"}]}]
    )
    received: list[str] = []

    # Once headers have arrived the SDK no longer wraps timeouts: a stalled stream
    # surfaces as the transport's ReadTimeout, not anthropic.APITimeoutError.
    with pytest.raises(httpx2.ReadTimeout):
        async with client.with_options(timeout=1.0).messages.stream(
            model=MODEL, max_tokens=10, messages=[user(match)]
        ) as stream:
            async for event in stream:
                received.append(event.type)

    # message_start, content_block_start, then one text delta (which the SDK reports twice).
    assert received[:2] == ["message_start", "content_block_start"]
    assert "content_block_delta" in received and "message_stop" not in received


async def _attempt(client: anthropic.AsyncAnthropic, match: str) -> tuple[list[str], Any]:
    """One streamed request: the events the SDK yielded, and its final message or the error."""
    events: list[str] = []
    try:
        async with client.messages.stream(model=MODEL, max_tokens=10, messages=[user(match)]) as stream:
            async for event in stream:
                events.append(event.type)
            return events, await stream.get_final_message()
    except (ValueError, httpx2.HTTPError) as exc:
        return events, exc


@pytest.mark.anyio
async def test_stream_faults_break_the_first_attempts_in_order_then_the_reply_streams_whole(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    match = marker()
    tool_input = {"command": "echo hi", "timeout_ms": 60000}
    await add_script(
        admin,
        match,
        [
            {
                "truncate_first": 1,
                "malformed_tool_json_first": 1,
                "reset_first": 1,
                "reset_after_events": 2,
                "content": [{"type": "tool_use", "name": "bash", "input": tool_input}],
            }
        ],
    )

    # Truncated: the body ends cleanly right before message_delta, so there is no stop_reason.
    events, truncated = await _attempt(client, match)
    assert events[-1] == "content_block_stop" and "message_stop" not in events
    assert truncated.stop_reason is None
    # Malformed: the SDK's accumulator cannot parse the tool input.
    events, malformed = await _attempt(client, match)
    assert isinstance(malformed, ValueError) and "Unable to parse tool parameter JSON" in str(malformed)
    # Reset: the connection drops after two events without finishing the chunked body.
    events, reset = await _attempt(client, match)
    assert events == ["message_start", "content_block_start"]
    assert isinstance(reset, httpx2.RemoteProtocolError)
    # Then the reply, whole.
    events, whole = await _attempt(client, match)
    assert events[-1] == "message_stop" and whole.stop_reason == "tool_use"
    assert whole.content[0].input == tool_input


@pytest.mark.anyio
async def test_stream_faults_leave_a_non_streamed_request_whole(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    match = marker()
    await add_script(
        admin, match, [{"truncate_first": 1, "content": [{"type": "text", "text": "all of it"}]}]
    )

    message = await client.messages.create(model=MODEL, max_tokens=10, messages=[user(match)])

    assert only_text(message) == "all of it" and message.stop_reason == "end_turn"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("script", "field"),
    [
        ({"turns": []}, "match"),
        (
            {"match": "m", "turns": [{"content": [{"type": "tool_use", "input": {}}]}]},
            "turns.0.content.0.tool_use.name",
        ),
        (
            {"match": "m", "turns": [{"fail_first": [{"status": 200, "type": "x"}]}]},
            "turns.0.fail_first.0.status",
        ),
        ({"match": "m", "turns": [{"contnet": []}]}, "turns.0.contnet"),
        (
            {"match": "m", "turns": [{"truncate_after_events": 2}]},
            "truncate_after_events needs truncate_first",
        ),
        ({"match": "m", "turns": [{"reset_after_events": 2}]}, "reset_after_events needs reset_first"),
        ({"match": "m", "turns": [{"malformed_tool_json_first": 1}]}, "needs a tool_use block"),
        ({"match": "m", "turns": [{"truncate_first": -1}]}, "turns.0.truncate_first"),
    ],
)
async def test_bad_script_is_rejected_naming_the_field(
    admin: httpx2.AsyncClient, script: dict[str, Any], field: str
) -> None:
    response = await admin.post("/_scripts", json=script)

    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert field in error["error"]["message"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"max_tokens": 5, "messages": []}).encode(), "model"),
        (json.dumps({"model": MODEL, "max_tokens": 5}).encode(), "messages"),
        (json.dumps({"model": MODEL, "messages": []}).encode(), "max_tokens"),
    ],
)
async def test_malformed_request_is_rejected(admin: httpx2.AsyncClient, body: bytes, problem: str) -> None:
    response = await admin.post("/v1/messages", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert problem in error["error"]["message"]


@pytest.mark.anyio
async def test_requests_log_can_be_cleared(
    client: anthropic.AsyncAnthropic, admin: httpx2.AsyncClient
) -> None:
    assert (await admin.delete("/_requests")).status_code == 204
    await client.messages.create(model=MODEL, max_tokens=7, messages=[user("first")])
    await client.messages.create(model=MODEL, max_tokens=8, messages=[user("second")])

    sent = (await admin.get("/_requests")).json()

    assert [(body["messages"][0]["content"], body["max_tokens"]) for body in sent] == [
        ("first", 7),
        ("second", 8),
    ]
    await admin.delete("/_requests")
    assert (await admin.get("/_requests")).json() == []
