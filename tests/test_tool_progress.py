"""Live progress of long MCP tool calls: each ``notifications/progress`` of a running call reaches
``event_deltas=tether.tool_progress`` streams as a preview tied to the pending tool use, in order
and before its result, rate-limited, never stored; the SDK's stream reader skips those frames (it
still parses every frame strictly); the trail page shows the latest progress, as text, while the
call is pending.

Upstreams: ``steps`` of ``tests.support.mcp_gateway_upstream`` (COUNT quick steps) and, for the
browser, an in-process ``gated`` tool that keeps reporting progress until the test opens its gate.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import anthropic
import anyio
import anyio.to_thread
import httpx2
import pytest
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from playwright.sync_api import Page, expect

from gateway.harness.previews import TOOL_PROGRESS, PreviewHub
from gateway.harness.tool_progress import MIN_INTERVAL, tool_progress
from gateway.serving import bind_socket
from tests.conftest import Scripts
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import STREAM_EVENT, mcp_agent, user_message
from tests.test_ui_trail import browser, page  # noqa: F401  (fixtures: headless Chromium)

STEPS = 30
GATED_MESSAGE = "copying <b>files</b> & more"


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(
        ["--label", "progress", "--port", "0"], module="tests.support.mcp_gateway_upstream"
    ) as server:
        yield server


def _steps_session(client: anthropic.Anthropic, scripts: Scripts, environment: Any, url: str) -> str:
    marker = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "steps", "input": {"count": STEPS}}]},
            {"content": [{"type": "text", "text": "all steps done"}]},
        ]
    )
    agent = mcp_agent(client, marker, "slow", url, name="progress-user")
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id


def _raw_frames(response: httpx2.Response) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """Each SSE frame as (its fields but data, its parsed data); pings and empty frames skipped."""
    fields: dict[str, str] = {}
    data: list[str] = []
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
            else:
                fields[name] = value.removeprefix(" ")
            continue
        if data and fields.get("event") != "ping":
            yield fields, json.loads("\n".join(data))
        fields, data = {}, []


def _stored(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    data: list[dict[str, Any]] = response.http_response.json()["data"]
    return data


def test_progress_previews_arrive_in_order_before_the_result_and_stay_out_of_the_log(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    upstream: ServerProcess,
    gateway: ServerProcess,
    api_key: str,
) -> None:
    session_id = _steps_session(client, scripts, environment, upstream.url + "/mcp")
    url = f"{gateway.url}/v1/sessions/{session_id}/events/stream"
    raw: list[tuple[dict[str, str], dict[str, Any]]] = []
    sdk_seen: list[Any] = []
    # Both streams ask for tool progress (and message previews) and are open before the turn starts.
    with (
        client.beta.sessions.events.stream(
            session_id,
            event_deltas=["agent.message", TOOL_PROGRESS],  # type: ignore[list-item]
        ) as sdk_stream,
        httpx2.stream(
            "GET",
            url,
            params={"event_deltas": TOOL_PROGRESS},
            headers={"x-api-key": api_key, "accept": "text/event-stream"},
            timeout=30,
        ) as response,
    ):
        assert response.status_code == 200
        client.beta.sessions.events.send(session_id, events=[user_message("go")])  # type: ignore[list-item]
        for fields, body in _raw_frames(response):
            raw.append((fields, body))
            if body["type"] == "session.status_idle":
                break
        for event in sdk_stream:
            sdk_seen.append(event)
            if event.type == "session.status_idle":
                break

    types = [body["type"] for _, body in raw]
    use = next(body for _, body in raw if body["type"] == "agent.mcp_tool_use")
    result = next(body for _, body in raw if body["type"] == "agent.mcp_tool_result")
    progress = [(fields, body) for fields, body in raw if body["type"] == TOOL_PROGRESS]
    bodies = [body for _, body in progress]

    # Tied to the pending call, between its use and its result, first step first, last step last.
    assert len(progress) >= 2
    assert all(body["event_id"] == use["id"] for body in bodies)
    positions = [i for i, kind in enumerate(types) if kind == TOOL_PROGRESS]
    assert types.index("agent.mcp_tool_use") < positions[0] and positions[-1] < types.index(
        "agent.mcp_tool_result"
    )
    assert bodies[0] == {
        "type": TOOL_PROGRESS,
        "event_id": use["id"],
        "progress": 1.0,
        "total": float(STEPS),
        "message": f"step 1 of {STEPS}",
    }
    assert bodies[-1]["progress"] == STEPS and bodies[-1]["message"] == f"step {STEPS} of {STEPS}"
    steps = [body["progress"] for body in bodies]
    assert steps == sorted(set(steps)), "in order, none twice"
    assert all(body["message"] == f"step {int(body['progress'])} of {STEPS}" for body in bodies)
    # No id (nothing to resume from) and no SSE event name (the SDK's reader skips them).
    assert all("id" not in fields and "event" not in fields for fields, _ in progress)
    # At most ten a second per call (newest wins), plus the one left waiting when the call ends.
    took = (_at(result["processed_at"]) - _at(use["processed_at"])).total_seconds()
    assert len(progress) <= 2 + took / MIN_INTERVAL, f"{len(progress)} previews in {took:.3f}s"

    # The result is intact, and the log holds the events alone.
    assert result["content"] == [{"type": "text", "text": f"progress did {STEPS} steps"}]
    assert result["is_error"] is False and result["mcp_tool_use_id"] == use["id"]
    stored = _stored(client, session_id)
    assert not any(event["type"].startswith("tether.") for event in stored)
    logged = [
        body["id"] for _, body in raw if body["type"] not in {TOOL_PROGRESS, "event_start", "event_delta"}
    ]
    assert logged == [event["id"] for event in stored][-len(logged) :]

    # The SDK's stream, asked for the same previews, parsed every frame strictly and saw no progress.
    for event in sdk_seen:
        STREAM_EVENT.validate_python(event.model_dump(mode="json", exclude_none=True))
    assert not any(event.type.startswith("tether.") for event in sdk_seen)
    assert [e.id for e in sdk_seen if e.type not in {"event_start", "event_delta"}] == logged
    sdk_result = next(e for e in sdk_seen if e.type == "agent.mcp_tool_result")
    assert sdk_result.content[0].text == f"progress did {STEPS} steps"


def test_streams_that_do_not_ask_get_no_progress_and_unknown_kinds_are_refused(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    upstream: ServerProcess,
    gateway: ServerProcess,
    api_key: str,
) -> None:
    session_id = _steps_session(client, scripts, environment, upstream.url + "/mcp")
    url = f"{gateway.url}/v1/sessions/{session_id}/events/stream"
    refused = httpx2.get(url, params={"event_deltas": "tether.nonsense"}, headers={"x-api-key": api_key})
    assert refused.status_code == 400
    assert refused.json()["error"]["type"] == "invalid_request_error"
    assert "tether.nonsense" in refused.json()["error"]["message"]

    seen: list[dict[str, Any]] = []
    with httpx2.stream(
        "GET", url, params={"event_deltas": "agent.message"}, headers={"x-api-key": api_key}, timeout=30
    ) as response:
        client.beta.sessions.events.send(session_id, events=[user_message("go")])  # type: ignore[list-item]
        for _, body in _raw_frames(response):
            seen.append(body)
            if body["type"] == "session.status_idle":
                break
    assert "agent.mcp_tool_result" in {body["type"] for body in seen}
    assert TOOL_PROGRESS not in {body["type"] for body in seen}


def _at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


# Rate limit, on the reporter itself ------------------------------------------------------------


@pytest.mark.anyio
async def test_faster_notifications_coalesce_newest_wins_and_the_last_is_published_at_the_end() -> None:
    hub = PreviewHub()
    with hub.subscribe("sesn_x", frozenset({TOOL_PROGRESS})) as subscription:
        async with tool_progress(hub, "sesn_x", 7, "sevt_use") as reporter:
            for step in range(1, 51):
                await reporter.report(step, 50, f"step {step}")
            assert [body["message"] for body in subscription.due(8)] == ["step 1"]
            await subscription.published()  # (returns at once: that was step 1's news)
            # The one waiting goes out once the interval has passed, while the call still runs.
            with anyio.fail_after(5):
                await subscription.published()
            assert [body["message"] for body in subscription.due(8)] == ["step 50"]
            await reporter.report(51, 50, "overshoot")
            await reporter.report(52, None, None)
        published = subscription.due(8)
    # Newest wins: of the two sent within one interval only the later is published, on exit.
    assert published == [
        {"type": TOOL_PROGRESS, "event_id": "sevt_use", "progress": 52, "total": None, "message": None}
    ]
    assert subscription.due(7) == []  # anchored at the tool use: after it, never before


# The trail page ----------------------------------------------------------------------------------


class GatedUpstream:
    """An MCP server in this process whose ``gated`` tool reports the same progress every 50 ms
    until ``gate`` is set (so a page connecting late still sees it), then answers."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        server = MCPServer("gated-upstream")

        @server.tool(description="Report progress until the test opens the gate, then answer.")
        async def gated(ctx: Context) -> str:
            self.started.set()
            while not await anyio.to_thread.run_sync(self.gate.wait, 0.05):
                await ctx.report_progress(1, 4, GATED_MESSAGE)
            return "the gate opened"

        app = server.streamable_http_app(
            streamable_http_path="/mcp",
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            host="127.0.0.1",
        )
        self._socket = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/mcp"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> GatedUpstream:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:  # polling a condition, with a deadline
            assert time.monotonic() < deadline, "the gated upstream did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.gate.set()
        self._server.should_exit = True
        self._thread.join(30)
        self._socket.close()


def test_the_trail_page_shows_the_latest_progress_as_text_while_the_call_is_pending(
    page: Page,  # noqa: F811
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    gateway: ServerProcess,
    api_key: str,
) -> None:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    with GatedUpstream() as upstream:
        marker = scripts.add(
            [
                {"content": [{"type": "tool_use", "name": "gated", "input": {}}]},
                {"content": [{"type": "text", "text": "gate passed"}]},
            ]
        )
        agent = mcp_agent(client, marker, "gated", upstream.url, name="gated-user")
        session_id = client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id
        client.beta.sessions.events.send(session_id, events=[user_message("go")])  # type: ignore[list-item]
        assert upstream.started.wait(30), "the tool was never called"

        page.goto(gateway.url + "/ui")
        page.fill("#api-key", api_key)
        page.click("#sign-in")
        expect(page.locator("#list-view")).to_be_visible()
        page.goto(f"{gateway.url}/ui#/sessions/{session_id}")
        call = page.locator('#timeline li[data-type="agent.mcp_tool_use"]')
        expect(call.locator(".outcome")).to_have_text("pending")
        # Next to the running timer: the percentage and the latest message; under it, the output.
        expect(call.locator(".progress")).to_have_text(f"25% · {GATED_MESSAGE}")
        expect(call.locator(".timer")).to_have_text(re.compile(r"\d"))
        expect(call.locator(".progress-output")).to_have_text(GATED_MESSAGE)
        expect(call.locator("b")).to_have_count(0)  # the tool's text stayed text

        upstream.gate.set()
        expect(call.locator(".outcome")).to_have_text("✓ result")
        expect(call.locator(".progress")).to_have_count(0)
        expect(call.locator(".progress-output")).to_have_count(0)
        expect(page.locator('#timeline li[data-type="agent.message"]')).to_contain_text("gate passed")
    assert errors == []
