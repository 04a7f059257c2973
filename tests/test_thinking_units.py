"""Extended thinking and the model's tool-use ids, part by part: the agent settings, the
conversation and request built from a log, the model client, and the scripted model's checks
(which make the end-to-end tests in ``test_thinking`` honest: they refuse what the API would).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from gateway.errors import InvalidRequest
from gateway.harness.context import ABANDONED, build_messages
from gateway.harness.model import call_model, make_client
from gateway.harness.request import build_request
from gateway.resources import agent_settings
from gateway.sessionlog.transcript import Transcript
from gateway.store.base import StoredEvent
from gateway.tools.toolbox import build_toolbox
from tests.conftest import Scripts
from tests.support.processes import ServerProcess

MODEL = "claude-sonnet-4-6"
THINKING = {"type": "thinking", "thinking": "Add first.", "signature": "sig_abc"}
REDACTED = {"type": "redacted_thinking", "data": "redacted_xyz"}


# Settings ------------------------------------------------------------------------------------


def test_thinking_settings_are_read_from_metadata() -> None:
    enabled = agent_settings.parse(
        {"tether.thinking": "enabled", "tether.thinking_budget_tokens": "2048", "tether.max_tokens": "4096"}
    )
    assert (enabled.thinking, enabled.thinking_budget_tokens, enabled.max_tokens) == ("enabled", 2048, 4096)
    assert agent_settings.parse({"tether.thinking": "adaptive"}).thinking == "adaptive"
    assert agent_settings.parse({}).thinking == "off"


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ({"tether.thinking": "sometimes"}, "must be one of off, adaptive, enabled"),
        ({"tether.thinking": "enabled", "tether.max_tokens": "4096"}, "needs tether.thinking_budget_tokens"),
        ({"tether.thinking": "enabled", "tether.thinking_budget_tokens": "2048"}, "needs tether.max_tokens"),
        (
            {
                "tether.thinking": "enabled",
                "tether.thinking_budget_tokens": "1023",
                "tether.max_tokens": "4096",
            },
            "must be an integer from 1024",
        ),
        (
            {
                "tether.thinking": "enabled",
                "tether.thinking_budget_tokens": "4096",
                "tether.max_tokens": "4096",
            },
            "must be less than tether.max_tokens (4096)",
        ),
        ({"tether.thinking": "adaptive", "tether.thinking_budget_tokens": "2048"}, "only with"),
        ({"tether.thinking_budget_tokens": "2048"}, "only with tether.thinking=enabled"),
    ],
)
def test_bad_thinking_settings_are_refused(metadata: dict[str, str], problem: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        agent_settings.parse(metadata)
    assert problem in str(refused.value)


# The conversation and the request from a log -------------------------------------------------


def _log(*bodies: dict[str, Any]) -> Transcript:
    events = [
        StoredEvent(session_id="sesn_1", seq=seq, id=body["id"], type=body["type"], body=body)
        for seq, body in enumerate(bodies, start=1)
    ]
    return Transcript.from_events(events)


def _user(event_id: str, text: str) -> dict[str, Any]:
    return {"id": event_id, "type": "user.message", "content": [{"type": "text", "text": text}]}


def _use(event_id: str, model_id: str | None) -> dict[str, Any]:
    body = {"id": event_id, "type": "agent.tool_use", "name": "bash", "input": {"command": "ls"}}
    return body if model_id is None else {**body, "tether_model_id": model_id}


def _result(event_id: str, use_id: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "a.txt"}]
    return {"id": event_id, "type": "agent.tool_result", "tool_use_id": use_id, "content": content}


def _name(body: dict[str, Any]) -> str:
    return str(body["name"])


def test_thinking_goes_back_unchanged_before_the_tool_use_under_the_model_ids() -> None:
    transcript = _log(
        _user("sevt_1", "list"),
        {"id": "sevt_2", "type": "agent.thinking", "tether_block": THINKING},
        {"id": "sevt_3", "type": "agent.message", "content": [{"type": "text", "text": "Looking."}]},
        _use("sevt_4", "toolu_a"),
        _result("sevt_5", "sevt_4"),
        {"id": "sevt_6", "type": "agent.thinking", "tether_block": REDACTED},
        _use("sevt_7", "toolu_b"),
    )

    messages = build_messages(transcript, _name)

    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == [
        THINKING,
        {"type": "text", "text": "Looking."},
        {"type": "tool_use", "id": "toolu_a", "name": "bash", "input": {"command": "ls"}},
    ]
    assert messages[2]["content"][0]["tool_use_id"] == "toolu_a"
    assert messages[3]["content"][:2] == [REDACTED, {**messages[1]["content"][2], "id": "toolu_b"}]
    # The open tool use is closed for the model under its own id too.
    closing = messages[4]["content"][0]
    assert closing["tool_use_id"] == "toolu_b" and closing["content"][0]["text"] == ABANDONED


def test_a_log_from_before_model_ids_and_thinking_blocks_were_kept_still_builds() -> None:
    transcript = _log(
        _user("sevt_1", "list"),
        {"id": "sevt_2", "type": "agent.thinking"},
        _use("sevt_3", None),
        _result("sevt_4", "sevt_3"),
    )

    messages = build_messages(transcript, _name)

    assert messages[1]["content"] == [
        {"type": "tool_use", "id": "sevt_3", "name": "bash", "input": {"command": "ls"}}
    ]
    assert messages[2]["content"][0]["tool_use_id"] == "sevt_3"


def _agent(metadata: dict[str, str], model: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "model": model or {"id": MODEL},
        "system": "s",
        "tools": [],
        "mcp_servers": [],
        "metadata": metadata,
    }


@pytest.mark.parametrize(
    ("metadata", "model", "expected"),
    [
        ({}, None, {}),
        (
            {
                "tether.thinking": "enabled",
                "tether.thinking_budget_tokens": "1500",
                "tether.max_tokens": "3000",
            },
            None,
            {"thinking": {"type": "enabled", "budget_tokens": 1500}, "max_tokens": 3000},
        ),
        (
            {"tether.thinking": "adaptive"},
            {"id": MODEL, "effort": {"type": "high"}},
            {"thinking": {"type": "adaptive"}, "output_config": {"effort": "high"}},
        ),
    ],
)
def test_the_request_carries_the_agents_thinking_and_effort(
    metadata: dict[str, str], model: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    toolbox = build_toolbox(_agent(metadata, model), [], {})
    request = build_request(_agent(metadata, model), _log(_user("sevt_1", "hi")), toolbox, 8192)

    assert request.get("thinking") == expected.get("thinking")
    assert request.get("output_config") == expected.get("output_config")
    assert request["max_tokens"] == expected.get("max_tokens", 8192)


# The model client and the scripted model -----------------------------------------------------


@pytest.fixture
def sdk(model_server: ServerProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=model_server.url, api_key="x", max_retries=0) as client:
        yield client


def _served(model_server: ServerProcess, marker: str) -> list[dict[str, Any]]:
    replies = httpx2.get(f"{model_server.url}/_replies").json()
    return [reply["content"] for reply in replies if marker in str(reply.get("system"))]


ON = {"type": "enabled", "budget_tokens": 1024}


@pytest.mark.anyio
async def test_call_model_keeps_thinking_signatures_and_redacted_data_intact(
    scripts: Scripts, model_server: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "thinking", "thinking": "Plan: use the tool."},
                    {"type": "redacted_thinking"},
                    {"type": "text", "text": "Working."},
                    {"type": "tool_use", "name": "bash", "input": {"command": "ls"}},
                ]
            }
        ]
    )
    request = {"model": MODEL, "max_tokens": 2048, "system": marker, "thinking": ON, "messages": []}
    request["messages"] = [{"role": "user", "content": "go"}]

    # Closed here: an unclosed client's finalizer would close its sockets from a later test's loop.
    async with make_client("x", model_server.url, 10) as client:
        result = await call_model(client, request)

    assert [b["type"] for b in result.content] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert result.content == _served(model_server, marker)[0]
    assert result.content[0]["signature"] and result.content[1]["data"]


def _first_turn(sdk: anthropic.Anthropic, scripts: Scripts, blocks: list[dict[str, Any]]) -> tuple[str, Any]:
    tool_use = {"type": "tool_use", "name": "bash", "input": {"command": "ls"}}
    marker = scripts.add([{"content": [*blocks, tool_use]}, {"content": [{"type": "text", "text": "done"}]}])
    first = sdk.messages.create(
        model=MODEL, max_tokens=2048, system=marker, thinking=ON, messages=[{"role": "user", "content": "go"}]
    )
    return marker, first


def _continue(sdk: anthropic.Anthropic, marker: str, first: Any, content: list[Any]) -> Any:
    result = {"type": "tool_result", "tool_use_id": first.content[-1].id, "content": "a.txt"}
    return sdk.messages.create(
        model=MODEL,
        max_tokens=2048,
        system=marker,
        thinking=ON,
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": content},
            {"role": "user", "content": [result]},
        ],
    )


def test_the_scripted_model_wants_the_thinking_back_before_the_tool_use(
    sdk: anthropic.Anthropic, scripts: Scripts
) -> None:
    marker, first = _first_turn(sdk, scripts, [{"type": "thinking", "thinking": "Look first."}])
    blocks = [block.to_dict() for block in first.content]

    with pytest.raises(anthropic.BadRequestError) as dropped:
        _continue(sdk, marker, first, blocks[1:])
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in str(dropped.value)

    assert _continue(sdk, marker, first, blocks).content[0].text == "done"


@pytest.mark.parametrize(
    "tamper",
    [
        lambda block: {**block, "signature": block["signature"] + "x"},
        lambda block: {**block, "thinking": block["thinking"] + " (edited)"},
    ],
    ids=["signature", "text"],
)
def test_the_scripted_model_refuses_thinking_it_did_not_sign(
    sdk: anthropic.Anthropic, scripts: Scripts, tamper: Any
) -> None:
    marker, first = _first_turn(sdk, scripts, [{"type": "thinking", "thinking": "Look first."}])
    blocks = [block.to_dict() for block in first.content]

    with pytest.raises(anthropic.BadRequestError) as refused:
        _continue(sdk, marker, first, [tamper(blocks[0]), *blocks[1:]])
    assert "messages.1.content.0: Invalid `signature` in `thinking` block" in str(refused.value)


def test_redacted_thinking_streams_whole_and_must_come_back_unchanged(
    sdk: anthropic.Anthropic, scripts: Scripts
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "redacted_thinking", "data": "opaque-1"}, {"type": "text", "text": "hi"}]},
            {"content": [{"type": "text", "text": "again"}]},
        ]
    )
    request: dict[str, Any] = {"model": MODEL, "max_tokens": 2048, "system": marker, "thinking": ON}
    with sdk.messages.stream(**request, messages=[{"role": "user", "content": "go"}]) as stream:
        kinds = [event.type for event in stream]
        first = stream.get_final_message()
    assert "thinking" not in kinds and "signature" not in kinds  # no deltas for redacted thinking
    assert first.content[0].to_dict() == {"type": "redacted_thinking", "data": "opaque-1"}

    forged = {"type": "redacted_thinking", "data": "opaque-2"}
    history = [{"role": "user", "content": "go"}, {"role": "assistant", "content": [forged]}]
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.create(**request, messages=[*history, {"role": "user", "content": "more"}])
    assert "Invalid `data` in `redacted_thinking` block" in str(refused.value)


@pytest.mark.parametrize(
    ("thinking", "problem"),
    [
        ({"type": "enabled", "budget_tokens": 512}, "greater than or equal to 1024"),
        ({"type": "enabled", "budget_tokens": 2048}, "`max_tokens` must be greater than"),
    ],
)
def test_the_scripted_model_checks_the_thinking_budget(
    sdk: anthropic.Anthropic, thinking: dict[str, Any], problem: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        sdk.messages.create(
            model=MODEL, max_tokens=2048, thinking=thinking, messages=[{"role": "user", "content": "go"}]
        )
    assert problem in str(refused.value)
