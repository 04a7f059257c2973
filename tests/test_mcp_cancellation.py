"""A client that cancels a call through the gateway: the upstream hears of it, nothing leaks,
and the audit says ``cancelled``.

Both client eras (``auto`` negotiates 2026-07-28, whose client aborts the POST; ``legacy``
sends ``notifications/cancelled``) against both upstream kinds: ``slow`` speaks only the
session-based revision (a server instance per session, listed at ``/_stats``; ``block``
writes its session id into the marker): a legacy client's call opens a session that is
closed after the cancel, a 2026-07-28 client's call runs in its caller's pooled session,
which is kept and reused; ``fast`` is a 2026-07-28 server. The ``block`` tool leaves
``MARKER.cancelled`` behind when the upstream cancels its handler.

An agent session interrupted during an MCP call does the same to a session-based server
it calls directly (``gateway/tools/mcp_client.py``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest

from gateway.mcp_gateway.audit import digest
from tests.conftest import Scripts
from tests.support.mcp_gateway_stack import (
    GatewayStack,
    eventually,
    start_gateway,
    start_upstream,
    text_of,
    upstream_sessions,
)
from tests.support.processes import ServerProcess
from tests.support.sessions import mcp_agent, user_message

MODES = ["auto", "legacy"]
UPSTREAMS = ["slow", "fast"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    api_key = "mcpcancel-" + secrets.token_hex(12)
    slow = start_upstream("slow", legacy_only=True)
    fast = start_upstream("fast")
    gateway = start_gateway(tmp_path_factory.mktemp("mcp-cancel"), api_key)
    stack = GatewayStack(gateway, api_key, {"slow": slow, "fast": fast})
    try:
        for name, upstream in stack.upstreams.items():
            stack.register_url(name, upstream)
            stack.post("/v1/mcp_virtual_servers", {"name": name, "servers": [{"server": name}]})
        yield stack
    finally:
        gateway.stop()
        slow.stop()
        fast.stop()


def _audited(stack: GatewayStack, virtual_server: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
    records = stack.get(f"/v1/mcp_audit?virtual_server={virtual_server}&tool=block&limit=100")["data"]
    return [record for record in records if record["arguments_sha256"] == digest(arguments)]


@pytest.mark.anyio
@pytest.mark.parametrize("upstream", UPSTREAMS)
@pytest.mark.parametrize("mode", MODES)
async def test_a_cancelled_call_cancels_upstream_closes_or_keeps_its_session_and_is_audited(
    stack: GatewayStack, tmp_path: Path, mode: str, upstream: str
) -> None:
    server = stack.upstreams[upstream]
    marker = tmp_path / f"block-{mode}-{upstream}"
    arguments = {"marker": str(marker)}
    async with stack.connect(upstream, mode) as client:
        assert text_of(await client.call_tool("echo", {"text": "warm"})) == f"{upstream} echo: warm"
        async with anyio.create_task_group() as tasks:
            scope = anyio.CancelScope()

            async def call() -> None:
                with scope:
                    await client.call_tool("block", arguments)

            tasks.start_soon(call)
            await eventually(
                lambda: anyio.to_thread.run_sync(marker.exists), what="the call reached upstream"
            )
            session = marker.read_text()  # the upstream session the gateway opened for this call
            if upstream == "slow":
                assert session in upstream_sessions(server)
            else:
                assert session == ""  # a 2026-07-28 upstream: sessionless
            scope.cancel()

        cancelled = marker.with_name(marker.name + ".cancelled")
        await eventually(
            lambda: anyio.to_thread.run_sync(cancelled.exists), what="upstream handler cancelled"
        )

        if upstream == "slow" and mode == "auto":
            # The express lane keeps the caller's upstream session (told of the cancelled
            # request) and its next call reuses it: nothing is left behind, nothing is opened.
            reused = await client.call_tool("seen_header", {"name": "mcp-session-id"})
            assert text_of(reused) == session
            assert session in upstream_sessions(server)
        else:

            async def closed() -> bool:
                return session not in await anyio.to_thread.run_sync(upstream_sessions, server)

            await eventually(closed, timeout=10, what="the call's upstream session closed")
        records = await eventually(
            lambda: anyio.to_thread.run_sync(_audited, stack, upstream, arguments), what="audit record"
        )
        assert [record["outcome"] for record in records] == ["cancelled"]
        assert records[0]["upstream"] == upstream and records[0]["upstream_tool"] == "block"
        # The session the client keeps using is still good.
        assert text_of(await client.call_tool("echo", {"text": "after"})) == f"{upstream} echo: after"


@pytest.fixture(scope="module")
def legacy_upstream() -> Iterator[ServerProcess]:
    server = start_upstream("old", legacy_only=True)
    try:
        yield server
    finally:
        server.stop()


def _wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll a condition with a deadline (this test is synchronous, like the SDK client)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_interrupted_agent_session_cancels_its_mcp_call_and_closes_the_upstream_session(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    legacy_upstream: ServerProcess,
    tmp_path: Path,
) -> None:
    marker = tmp_path / "agent-block"
    script = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "block", "input": {"marker": str(marker)}}]},
            {"content": [{"type": "text", "text": "stopped"}]},
        ]
    )
    agent = mcp_agent(client, script, "old", legacy_upstream.url + "/mcp", name="interrupted-mcp")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.events.send(session.id, events=[user_message("block")])  # type: ignore[list-item]
        upstream_session = _wait_for(lambda: marker.exists() and marker.read_text(), "the call upstream")
        assert upstream_session in upstream_sessions(legacy_upstream)
        client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
        seen = []
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle":
                break
    result = next(e for e in seen if e.type == "agent.mcp_tool_result")
    assert result.is_error
    _wait_for(marker.with_name(marker.name + ".cancelled").exists, "the upstream handler cancelled")
    _wait_for(lambda: upstream_session not in upstream_sessions(legacy_upstream), "the session closed", 10)
