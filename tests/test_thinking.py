"""Extended thinking and the model's tool-use ids, end to end: the SDK drives a gateway process
that calls the scripted model, which refuses (as the API does) thinking that comes back changed,
missing before a tool use, or signed by nobody. What the model received is read back from it."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.conftest import Scripts
from tests.support import restarts
from tests.support.processes import ServerProcess, running_server
from tests.support.restarts import sdk_client
from tests.support.sessions import send_and_stream, strictly_valid, user_message

database_url = restarts.database_url
launch = restarts.launch

MODEL = "claude-sonnet-4-6"
THINKING = {
    "tether.thinking": "enabled",
    "tether.thinking_budget_tokens": "2048",
    "tether.max_tokens": "4096",
}
THOUGHTS = ["I should add 1 and 2 first.", "Now the second sum.", "Both sums are in."]


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


def _agent(
    client: anthropic.Anthropic, marker: str, upstream: ServerProcess, metadata: dict[str, str]
) -> Any:
    return client.beta.agents.create(
        name="thinker",
        model=MODEL,
        system=marker,
        mcp_servers=[{"type": "url", "name": "calc", "url": upstream.url + "/mcp"}],
        tools=[
            {
                "type": "mcp_toolset",
                "mcp_server_name": "calc",
                "default_config": {"permission_policy": {"type": "always_allow"}},
            }
        ],
        metadata=metadata,
    )


def _session(client: anthropic.Anthropic, agent: Any) -> Any:
    return client.beta.sessions.create(
        agent=agent.id, environment_id=client.beta.environments.create(name="e").id
    )


def _raw_events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    return response.http_response.json()["data"]


def _replies(model_server: ServerProcess, marker: str) -> list[list[dict[str, Any]]]:
    """What the scripted model served for this test's script, in order."""
    served = httpx2.get(f"{model_server.url}/_replies").json()
    return [reply["content"] for reply in served if marker in str(reply.get("system"))]


def _unmarked(value: Any) -> Any:
    """Without prompt-cache marks, which the harness may add to blocks other than thinking."""
    if isinstance(value, dict):
        return {key: _unmarked(item) for key, item in value.items() if key != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(item) for item in value]
    return value


def _texts(request: dict[str, Any]) -> list[str]:
    """Every text the model was shown in the conversation, tool results included."""
    found: list[str] = []
    for message in request["messages"]:
        for block in message["content"]:
            if block["type"] == "text":
                found.append(block["text"])
            elif block["type"] == "tool_result":
                found += [inner["text"] for inner in block["content"] if inner["type"] == "text"]
    return found


def _thinking_turn(scripts: Scripts) -> str:
    return scripts.add(
        [
            {
                "content": [
                    {"type": "thinking", "thinking": THOUGHTS[0]},
                    {"type": "text", "text": "Adding."},
                    {"type": "tool_use", "name": "add", "input": {"a": 1, "b": 2}},
                ]
            },
            {
                "content": [
                    {"type": "thinking", "thinking": THOUGHTS[1]},
                    {"type": "redacted_thinking"},
                    {"type": "tool_use", "name": "add", "input": {"a": 3, "b": 4}},
                ]
            },
            {
                "content": [
                    {"type": "thinking", "thinking": THOUGHTS[2]},
                    {"type": "text", "text": "The sums are 3 and {{last_tool_result}}."},
                ]
            },
        ]
    )


def test_a_thinking_tool_use_turn_sends_thinking_back_unchanged_under_the_models_ids(
    client: anthropic.Anthropic, scripts: Scripts, upstream: ServerProcess, model_server: ServerProcess
) -> None:
    marker = _thinking_turn(scripts)
    session = _session(client, _agent(client, marker, upstream, THINKING))

    streamed = send_and_stream(client, session.id, [user_message("add things")])

    assert streamed[-1].stop_reason.type == "end_turn"
    assert [e for e in streamed if e.type == "agent.message"][-1].content[0].text == "The sums are 3 and 7."
    requests, replies = scripts.requests_for(marker), _replies(model_server, marker)
    assert len(requests) == len(replies) == 3
    for request in requests:
        assert request["thinking"] == {"type": "enabled", "budget_tokens": 2048}
        assert request["max_tokens"] == 4096
        assert not any(thought in text for thought in THOUGHTS for text in _texts(request))
    # Each earlier reply goes back whole, in order: thinking blocks exactly as served first.
    for turn, request in enumerate(requests[1:], start=1):
        assistant = [m for m in request["messages"] if m["role"] == "assistant"]
        assert [_unmarked(m["content"]) for m in assistant] == replies[:turn]
        for sent, served in zip(assistant, replies[:turn], strict=True):
            thinking = [b for b in served if b["type"] in ("thinking", "redacted_thinking")]
            assert sent["content"][: len(thinking)] == thinking
    # Tool uses and their results carry the ids the model issued.
    issued = [block["id"] for reply in replies[:2] for block in reply if block["type"] == "tool_use"]
    assert all(model_id.startswith("toolu_") for model_id in issued)
    answered = [
        block["tool_use_id"]
        for message in requests[2]["messages"]
        for block in message["content"]
        if block["type"] == "tool_result"
    ]
    assert answered == issued

    raw = _raw_events(client, session.id)
    strictly_valid(raw)
    stored = [e["tether_block"] for e in raw if e["type"] == "agent.thinking"]
    served = [b for reply in replies for b in reply if b["type"] in ("thinking", "redacted_thinking")]
    assert stored == served
    # Shown as logged, like tether_policy (the hosted API carries no content on this event).
    assert [e.model_extra["tether_block"] for e in streamed if e.type == "agent.thinking"] == served
    uses = [e for e in raw if e["type"] == "agent.mcp_tool_use"]
    assert [use["tether_model_id"] for use in uses] == issued
    # The log still links each result to its tool-use event.
    results = [e for e in raw if e["type"] == "agent.mcp_tool_result"]
    assert [r["mcp_tool_use_id"] for r in results] == [use["id"] for use in uses]


@pytest.mark.parametrize(
    ("metadata", "model", "expected"),
    [
        ({"tether.max_tokens": "777"}, MODEL, {"max_tokens": 777}),
        (
            {"tether.thinking": "adaptive", "tether.max_tokens": "5000"},
            {"id": MODEL, "effort": "high"},
            {"max_tokens": 5000, "thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}},
        ),
    ],
    ids=["thinking-off", "adaptive-with-effort"],
)
def test_the_model_receives_the_agents_max_tokens_thinking_and_effort(
    client: anthropic.Anthropic,
    scripts: Scripts,
    metadata: dict[str, str],
    model: Any,
    expected: dict[str, Any],
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "ok"}]}])
    agent = client.beta.agents.create(name="sized", model=model, system=marker, metadata=metadata)

    send_and_stream(client, _session(client, agent).id, [user_message("hi")])

    [request] = scripts.requests_for(marker)
    assert request["max_tokens"] == expected["max_tokens"]
    assert request.get("thinking") == expected.get("thinking")
    assert request.get("output_config") == expected.get("output_config")


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"tether.thinking": "always"}, "metadata.tether.thinking: must be one of off, adaptive, enabled"),
        ({"tether.thinking": "enabled", "tether.max_tokens": "4096"}, "needs tether.thinking_budget_tokens"),
        ({**THINKING, "tether.thinking_budget_tokens": "100"}, "must be an integer from 1024"),
        ({**THINKING, "tether.thinking_budget_tokens": "4096"}, "must be less than tether.max_tokens"),
        ({"tether.thinking_budget_tokens": "2048"}, "only with tether.thinking=enabled"),
    ],
)
def test_bad_thinking_settings_are_400s_on_create(
    client: anthropic.Anthropic, metadata: dict[str, str], problem: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.agents.create(name="bad", model=MODEL, metadata=metadata)
    body = refused.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert problem in body["error"]["message"]


def test_an_update_that_leaves_no_room_beside_the_thinking_budget_is_a_400(
    client: anthropic.Anthropic,
) -> None:
    agent = client.beta.agents.create(name="thinker", model=MODEL, metadata=THINKING)

    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.agents.update(agent.id, version=agent.version, metadata={"tether.max_tokens": "2048"})

    assert (
        "2048 must be less than tether.max_tokens (2048)" in refused.value.response.json()["error"]["message"]
    )
    assert client.beta.agents.retrieve(agent.id).version == agent.version


def test_a_gateway_restart_mid_turn_sends_the_same_request_again(
    launch: Callable[[], ServerProcess],
    api_key: str,
    scripts: Scripts,
    upstream: ServerProcess,
    model_server: ServerProcess,
) -> None:
    gate = "thinking-" + os.urandom(6).hex()
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "thinking", "thinking": THOUGHTS[0]},
                    {"type": "redacted_thinking"},
                    {"type": "tool_use", "name": "add", "input": {"a": 1, "b": 2}},
                ]
            },
            {"hold": gate, "content": [{"type": "text", "text": "The sum is {{last_tool_result}}."}]},
        ]
    )
    first = launch()
    client = sdk_client(first, api_key)
    session = _session(client, _agent(client, marker, upstream, THINKING))
    client.beta.sessions.events.send(session.id, events=[user_message("add")])  # type: ignore[list-item]
    # The second model call has reached the model, which holds it: kill the gateway now.
    assert httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", timeout=40).status_code == 204
    before = _raw_events(client, session.id)
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()

    client = sdk_client(launch(), api_key)
    resumed = _stream_until_idle(client, session.id, before[-1]["id"])

    assert resumed[0].type == "session.status_rescheduled" and resumed[-1].stop_reason.type == "end_turn"
    assert [e for e in resumed if e.type == "agent.message"][-1].content[0].text == "The sum is 3."
    requests = scripts.requests_for(marker)
    assert len(requests) == 3, "one request per turn, plus the one sent again after the restart"
    assert requests[2] == requests[1]
    reply = _replies(model_server, marker)[0]
    assistant = requests[2]["messages"][1]
    assert assistant["role"] == "assistant" and assistant["content"][:2] == reply[:2]
    assert _unmarked(assistant["content"]) == reply
    strictly_valid(_raw_events(client, session.id))


def _stream_until_idle(client: anthropic.Anthropic, session_id: str, after: str) -> list[Any]:
    seen = []
    with client.beta.sessions.events.stream(session_id, extra_headers={"Last-Event-ID": after}) as stream:
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle":
                return seen
    raise AssertionError("stream ended before the session went idle")
