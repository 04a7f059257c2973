"""What the express-lane and pooled-session tests share: raw calls both lanes must answer
alike, reading an answer, a gateway with one upstream, and the upstream sessions seen."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support.mcp_gateway_stack import GatewayStack, start_gateway, text_of, upstream_sessions
from tests.support.processes import ServerProcess


def answer_of(
    response: httpx2.Response, parse: Callable[[str], Any] = json.loads
) -> tuple[int, str, list[Any]]:
    """Status, media type and the JSON-RPC messages of an answer (one, or each SSE event's)."""
    media = response.headers.get("content-type", "").partition(";")[0]
    if media == "text/event-stream":
        events = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        return response.status_code, media, [parse(event) for event in events]
    return response.status_code, media, [parse(response.text)] if response.content else []


def watcher_sessions(upstream: ServerProcess) -> set[str]:
    """The session the gateway's watcher holds to follow list changes (not a call's), once
    it has connected."""
    deadline = time.monotonic() + 30
    while not (sessions := upstream_sessions(upstream)):
        assert time.monotonic() < deadline, "the gateway's watcher never connected"
        time.sleep(0.05)
    return sessions


VERSION = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": VERSION, "io.modelcontextprotocol/clientCapabilities": {}}


def tools_call(
    name: str, arguments: Any, request_id: Any = 7, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A raw 2026-07-28 ``tools/call`` message (its envelope in ``_meta``)."""
    params = {"name": name, "arguments": arguments, "_meta": {**META, **(meta or {})}}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


SHARED_CASES = {
    "ok": tools_call("add", {"a": 2, "b": 3}),
    "tool error": tools_call("explode", {"reason": "on purpose"}),
    "bad arguments": tools_call("add", {"a": 2}),
    "string id": tools_call("add", {"a": 1, "b": 1}, request_id="req-1"),
    "denied by policy": tools_call("echo", {"text": "DROP TABLE users"}),
    "unknown tool": tools_call("nope", {}),
    "progress": tools_call("steps", {"count": 2}, meta={"progressToken": "tok-1"}),
}
"""Calls both lanes must answer alike, whatever the upstream's era (the test upstream's tools;
``echo`` of DROP TABLE is refused by the test policy when the upstream is named ``alpha``)."""


@contextmanager
def one_upstream_gateway(
    directory: Path, upstream: ServerProcess, env: dict[str, str] | None = None
) -> Iterator[GatewayStack]:
    """A gateway with ``upstream`` registered as ``old`` behind a virtual server ``old``."""
    api_key = "mcplanes-" + secrets.token_hex(12)
    gateway = start_gateway(directory, api_key, env)
    stack = GatewayStack(gateway, api_key, {"old": upstream})
    try:
        stack.register_url("old", upstream)
        stack.post("/v1/mcp_virtual_servers", {"name": "old", "servers": [{"server": "old"}]})
        yield stack
    finally:
        gateway.stop()


async def session_seen(stack: GatewayStack, headers: dict[str, str] | None = None) -> str:
    """The upstream session id a call of this caller (the API key, or ``headers``) ran in."""
    async with stack.connect("old", "auto", headers=headers) as client:
        result = await client.call_tool("seen_header", {"name": "mcp-session-id"})
        assert not result.is_error, text_of(result)
        return text_of(result)


@contextmanager
def both_lanes(
    directories: pytest.TempPathFactory,
    upstreams: dict[str, ServerProcess],
    virtual_servers: dict[str, str],
    env: dict[str, str] | None = None,
) -> Iterator[dict[str, GatewayStack]]:
    """Two gateways side by side, ``express`` (the default) and ``sdk`` (``TETHER_MCP_EXPRESS=0``),
    each with ``upstreams`` registered under their keys and each virtual server (name ->
    upstream) selecting one; stopped afterwards (the upstreams are the caller's)."""
    stacks: dict[str, GatewayStack] = {}
    try:
        for lane, lane_env in (("express", {}), ("sdk", {"TETHER_MCP_EXPRESS": "0"})):
            key = f"mcplanes-{lane}-" + secrets.token_hex(8)
            gateway = start_gateway(directories.mktemp(f"mcp-{lane}"), key, {**lane_env, **(env or {})})
            stack = stacks[lane] = GatewayStack(gateway, key, dict(upstreams))
            for name, upstream in upstreams.items():
                stack.register_url(name, upstream)
            for name, upstream_name in virtual_servers.items():
                stack.post("/v1/mcp_virtual_servers", {"name": name, "servers": [{"server": upstream_name}]})
        yield stacks
    finally:
        for stack in stacks.values():
            stack.gateway.stop()
