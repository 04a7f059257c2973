"""Large MCP messages: up to the limit they pass, over it they fail cleanly, never as "unreachable".

Through the gateway endpoint (limit lowered to 6 MiB for the module's gateway, both protocol
eras) and through an agent session (the session gateway's default 16 MiB). The stack's
breaker opens after two failures, so five oversize calls would have opened it had they
counted.

The ways around the limit are closed too: an upstream that gzips its answers whatever
was asked (``gzipped``: counted decoded), a session-based one whose SSE events carry ids
(``resumable``: the SDK would fetch the cut-off answer again over a GET with
``Last-Event-ID``). Agent
sessions' client (``mcp_client``) is called in-process with the limit set in the
environment, which it reads per call; many small progress notifications are each a
message, and empty settings mean the defaults.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import anthropic
import mcp.types as mcp_types
import pytest
from mcp import MCPError

from gateway.mcp_gateway.settings import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_ENV, McpGatewaySettings
from gateway.settings_types import ConfigError
from gateway.tools import mcp_client
from tests.conftest import Scripts
from tests.support.mcp_gateway_stack import (
    UPSTREAM_MODULE,
    GatewayStack,
    start_gateway,
    start_upstream,
    text_of,
)
from tests.support.processes import ServerProcess, start_server
from tests.support.sessions import mcp_agent, send_and_stream, user_message

MODES = ["auto", "legacy"]
MIB = 1024 * 1024
LIMIT = 6 * MIB


@pytest.fixture(scope="module")
def gzipped() -> Iterator[ServerProcess]:
    server = start_server(["--label", "gzip", "--port", "0", "--gzip"], module=UPSTREAM_MODULE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def resumable() -> Iterator[ServerProcess]:
    args = ["--label", "resume", "--port", "0", "--resumable", "--legacy-only"]
    server = start_server(args, module=UPSTREAM_MODULE)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, gzipped: ServerProcess, resumable: ServerProcess
) -> Iterator[GatewayStack]:
    api_key = "mcpbig-" + secrets.token_hex(12)
    big = start_upstream("big")
    strict = start_upstream("strict", max_request_bytes=64 * 1024)
    gateway = start_gateway(tmp_path_factory.mktemp("mcp-big"), api_key, {MAX_MESSAGE_ENV: str(LIMIT)})
    upstreams = {"big": big, "strict": strict, "gzipped": gzipped, "resumable": resumable}
    stack = GatewayStack(gateway, api_key, upstreams)
    try:
        for name, server in upstreams.items():
            stack.register_url(name, server)
            stack.post("/v1/mcp_virtual_servers", {"name": name, "servers": [{"server": name}]})
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


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_a_gzipped_answer_is_counted_decoded_and_identity_is_asked_for(
    stack: GatewayStack, mode: str
) -> None:
    async with stack.connect("gzipped", mode, max_sse_event_size=None) as client:
        asked = await client.call_tool("seen_header", {"name": "accept-encoding"})
        assert text_of(asked) == "identity"
        large = await client.call_tool("blob", {"size": 5 * MIB})
        assert not large.is_error and text_of(large) == "g" * (5 * MIB)
        # LIMIT + 1 MiB of "g" is a few KiB gzipped: only a count of decoded bytes stops it.
        with pytest.raises(MCPError) as refused:
            await client.call_tool("blob", {"size": LIMIT + MIB})
        assert f"{LIMIT}-byte message limit" in str(refused.value)
        assert _breaker(stack, "gzipped")["state"] == "closed"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", MODES)
async def test_a_resumable_upstreams_oversize_answer_fails_and_is_never_returned(
    stack: GatewayStack, mode: str
) -> None:
    async with stack.connect("resumable", mode, max_sse_event_size=None) as client:
        for _ in range(3):
            with pytest.raises(MCPError) as refused:
                await client.call_tool("blob", {"size": LIMIT + MIB})
            assert f"{LIMIT}-byte message limit" in str(refused.value)
            # The same answer sent only over the resumed stream (a GET with Last-Event-ID).
            with pytest.raises(MCPError) as refused:
                await client.call_tool("polled_blob", {"size": LIMIT + MIB})
            assert f"{LIMIT}-byte message limit" in str(refused.value)
        assert _breaker(stack, "resumable")["state"] == "closed"
        small = await client.call_tool("blob", {"size": 10})
        polled = await client.call_tool("polled_blob", {"size": 10})
    assert text_of(small) == text_of(polled) == "r" * 10


@pytest.mark.anyio
async def test_an_agent_sessions_client_bounds_gzipped_and_resumed_answers(
    monkeypatch: pytest.MonkeyPatch, gzipped: ServerProcess, resumable: ServerProcess
) -> None:
    monkeypatch.setenv(MAX_MESSAGE_ENV, str(256 * 1024))
    for server, letter in ((gzipped, "g"), (resumable, "r")):
        url = server.url + "/mcp"
        fits = await mcp_client.call_tool(url, "blob", {"size": 200 * 1024})
        assert not fits.is_error and fits.content[0]["text"].startswith(letter * 1000)
        over = await mcp_client.call_tool(url, "blob", {"size": 300 * 1024})
        assert over.is_error is True, server.url
        assert "262144-byte message limit" in over.content[0]["text"]
    resumed = resumable.url + "/mcp"
    polled = await mcp_client.call_tool(resumed, "polled_blob", {"size": 200 * 1024})
    assert not polled.is_error and polled.content[0]["text"].startswith("r" * 1000)
    over_get = await mcp_client.call_tool(resumed, "polled_blob", {"size": 300 * 1024})
    assert over_get.is_error is True and "262144-byte message limit" in over_get.content[0]["text"]
    asked = await mcp_client.call_tool(gzipped.url + "/mcp", "seen_header", {"name": "accept-encoding"})
    assert asked.content[0]["text"] == "identity"


@pytest.mark.anyio
@pytest.mark.parametrize("label", ["plain", "gzipped", "resumable"])
async def test_many_small_progress_messages_are_each_a_message_not_one_too_large_response(
    monkeypatch: pytest.MonkeyPatch,
    upstream: ServerProcess,
    gzipped: ServerProcess,
    resumable: ServerProcess,
    label: str,
) -> None:
    """``plain`` is the case that was cut off; the others show events are found in a decoded
    body and on a session-based server's stream too."""
    monkeypatch.setenv(MAX_MESSAGE_ENV, "8192")  # above the upstream's tools/list answer
    server = {"plain": upstream, "gzipped": gzipped, "resumable": resumable}[label]
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    # 100 notifications of ~200 bytes each: some 20 KiB on one POST stream, each well under 8 KiB.
    result = await mcp_client.call_tool(server.url + "/mcp", "steps", {"count": 100}, on_progress=on_progress)
    assert not result.is_error, result.content
    assert result.content[0]["text"].endswith("did 100 steps")
    assert seen == [float(step) for step in range(1, 101)]


@pytest.mark.anyio
async def test_empty_limits_mean_the_defaults_and_a_malformed_one_fails_at_start(
    monkeypatch: pytest.MonkeyPatch, upstream: ServerProcess
) -> None:
    empty = {MAX_MESSAGE_ENV: "", "TETHER_MCP_MAX_REQUEST_BYTES": "", "TETHER_MCP_CALL_TIMEOUT": " "}
    settings = McpGatewaySettings.from_env(empty)
    assert settings.max_message_bytes == settings.max_request_bytes == DEFAULT_MAX_MESSAGE_BYTES
    assert settings.call_timeout == 60.0
    for name in empty:
        monkeypatch.setenv(name, "")
    result = await mcp_client.call_tool(upstream.url + "/mcp", "add", {"a": 2, "b": 3})
    assert not result.is_error and result.content[0]["text"] == "agent:5"
    with pytest.raises(ConfigError) as bad:
        McpGatewaySettings.from_env({MAX_MESSAGE_ENV: "16MiB"})
    assert str(bad.value).startswith(f"{MAX_MESSAGE_ENV}='16MiB'") and "\n" not in str(bad.value)
