"""Large MCP messages: up to the limit they pass, over it they fail cleanly, never as "unreachable".

Through the gateway endpoint (limit lowered to 6 MiB for the module's gateway, both protocol
eras) and through an agent session (the session gateway's default 16 MiB). The stack's
breaker opens after two failures, so five oversize calls would have opened it had they
counted.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import anthropic
import mcp.types as mcp_types
import pytest
from mcp import MCPError

from gateway.mcp_gateway.settings import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_ENV
from tests.conftest import Scripts
from tests.support.mcp_gateway_stack import GatewayStack, start_gateway, start_upstream, text_of
from tests.support.processes import ServerProcess
from tests.support.sessions import mcp_agent, send_and_stream, user_message

MODES = ["auto", "legacy"]
MIB = 1024 * 1024
LIMIT = 6 * MIB


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    api_key = "mcpbig-" + secrets.token_hex(12)
    big = start_upstream("big")
    strict = start_upstream("strict", max_request_bytes=64 * 1024)
    gateway = start_gateway(tmp_path_factory.mktemp("mcp-big"), api_key, {MAX_MESSAGE_ENV: str(LIMIT)})
    stack = GatewayStack(gateway, api_key, {"big": big, "strict": strict})
    try:
        stack.register_url("big", big)
        stack.register_url("strict", strict)
        stack.post("/v1/mcp_virtual_servers", {"name": "big", "servers": [{"server": "big"}]})
        stack.post("/v1/mcp_virtual_servers", {"name": "strict", "servers": [{"server": "strict"}]})
        yield stack
    finally:
        gateway.stop()
        big.stop()
        strict.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    server = start_upstream("agent")
    try:
        yield server
    finally:
        server.stop()


def _breaker(stack: GatewayStack, name: str) -> dict[str, Any]:
    breaker: dict[str, Any] = stack.get(f"/v1/mcp_servers/{name}")["health"]["breaker"]
    return breaker


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_a_5_mib_result_passes_through_the_endpoint(stack: GatewayStack, mode: str) -> None:
    async with stack.connect("big", mode, max_sse_event_size=None) as client:
        result = await client.call_tool("blob", {"size": 5 * MIB})
    assert not result.is_error
    assert text_of(result) == "b" * (5 * MIB)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_oversize_results_are_clear_errors_that_never_open_the_breaker(
    stack: GatewayStack, mode: str
) -> None:
    async with stack.connect("big", mode, max_sse_event_size=None) as client:
        for _ in range(5):
            with pytest.raises(MCPError) as refused:
                await client.call_tool("blob", {"size": LIMIT + MIB})
            assert refused.value.code == mcp_types.INTERNAL_ERROR
            assert f"{LIMIT}-byte message limit" in str(refused.value)
            assert MAX_MESSAGE_ENV in str(refused.value)
        breaker = _breaker(stack, "big")
        assert breaker["state"] == "closed" and breaker["consecutive_failures"] == 0
        small = await client.call_tool("blob", {"size": 10})
    assert not small.is_error and text_of(small) == "b" * 10
    records = stack.get("/v1/mcp_audit?virtual_server=big&outcome=too_large&limit=100")["data"]
    assert len(records) >= 5 and all(record["tool"] == "blob" for record in records)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_an_upstream_413_is_a_clear_error_that_never_opens_the_breaker(
    stack: GatewayStack, mode: str
) -> None:
    async with stack.connect("strict", mode) as client:
        for _ in range(3):
            with pytest.raises(MCPError) as refused:
                await client.call_tool("echo", {"text": "x" * (100 * 1024)})
            assert "HTTP 413" in str(refused.value)
        assert _breaker(stack, "strict")["state"] == "closed"
        small = await client.call_tool("echo", {"text": "still here"})
    assert text_of(small) == "strict echo: still here"


def test_an_agent_session_receives_a_5_mib_result_and_an_oversize_one_as_a_named_error(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "blob", "input": {"size": 5 * MIB}}]},
            {"content": [{"type": "tool_use", "name": "blob", "input": {"size": DEFAULT_MAX_MESSAGE_BYTES}}]},
            {"content": [{"type": "tool_use", "name": "add", "input": {"a": 1, "b": 2}}]},
            {"content": [{"type": "text", "text": "done"}]},
        ]
    )
    agent = mcp_agent(client, marker, "big", upstream.url + "/mcp", name="big-results")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    streamed = send_and_stream(client, session.id, [user_message("fetch the blobs")])

    results = [e for e in streamed if e.type == "agent.mcp_tool_result"]
    assert len(results) == 3
    large, oversize, small = results
    # The whole 5 MiB arrived; what the model is shown is capped (mcp_client.MAX_RESULT_CHARS).
    assert not large.is_error and large.content[0].text.startswith("a" * 100_000)
    assert "truncated" in large.content[0].text
    assert oversize.is_error is True
    message = oversize.content[0].text
    assert f"{DEFAULT_MAX_MESSAGE_BYTES}-byte message limit" in message and MAX_MESSAGE_ENV in message
    assert "unavailable" not in message
    assert not small.is_error and small.content[0].text == "agent:3"
    assert not [e for e in streamed if e.type == "session.error"]
