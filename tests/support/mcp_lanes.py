"""What the express-lane and pooled-session tests share: reading an MCP answer, and the
upstream session the gateway's own watcher holds."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import httpx2

from tests.support.mcp_gateway_stack import upstream_sessions
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
