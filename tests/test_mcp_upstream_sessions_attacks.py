"""Review attacks on the express lane's pooled upstream sessions (``upstream_sessions``).

The promise: a session with a session-based (2025-11-25) upstream is used by one call at
a time, of one caller and one credential, and every session the gateway opens is closed
by it (idle for 60 s, surplus, at shutdown) unless the upstream already forgot it. These
tests hunt for sessions shared by two calls at once, sessions left open on the upstream
(``held`` lists them), calls failed for want of a session, a shutdown that overruns its
bound, and answers or audit records that differ from the SDK path's
(``TETHER_MCP_EXPRESS=0``).

``session_attack_upstream`` adds ``hold`` (answers when the test says so) and a switch
that leaves ``notifications/initialized`` unanswered to the usual test upstream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
import pytest
from mcp import MCPError

from gateway.mcp_gateway import http_upstream, wire
from gateway.mcp_gateway.breaker import CircuitBreaker
from gateway.mcp_gateway.http_upstream import HttpUpstream
from gateway.mcp_gateway.sizing import SizeWatch
from gateway.mcp_gateway.upstream_sessions import UpstreamSession
from gateway.mcp_gateway.wire import Era
from tests.support.mcp_gateway_stack import GatewayStack, eventually, text_of
from tests.support.mcp_gateway_stack import upstream_sessions as held
from tests.support.mcp_lanes import (
    SHARED_CASES,
    VERSION,
    answer_of,
    both_lanes,
    one_upstream_gateway,
    session_seen,
    tools_call,
    watcher_sessions,
)
from tests.support.processes import ServerProcess, start_server

pytestmark = pytest.mark.anyio
ATTACK_UPSTREAM = "tests.support.session_attack_upstream"


@pytest.fixture
def hang_flag(tmp_path: Path) -> Path:
    return tmp_path / "hang-initialized"


@pytest.fixture
def old(hang_flag: Path) -> Iterator[ServerProcess]:
    server = start_server(
        ["--label", "old", "--port", "0", "--hang-initialized", str(hang_flag)], module=ATTACK_UPSTREAM
    )
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def _stack(tmp_path: Path, old: ServerProcess, **env: str) -> AsyncIterator[GatewayStack]:
    with one_upstream_gateway(tmp_path / "gw", old, env) as stack:
        yield stack


async def _warm(stack: GatewayStack, old: ServerProcess) -> set[str]:
    """Let the gateway learn the upstream's era (its first call takes the SDK path)."""
    watcher = watcher_sessions(old)
    await session_seen(stack)
    return watcher


async def _held(old: ServerProcess) -> set[str]:
    return await anyio.to_thread.run_sync(held, old)


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await anyio.to_thread.run_sync(path.exists)

    return check


def _bearer(stack: GatewayStack, subject: str) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.token(subject, 'old')}"}


# Guards that hold ------------------------------------------------------------------------


async def test_two_concurrent_calls_of_one_caller_never_share_a_session(
    tmp_path: Path, old: ServerProcess
) -> None:
    release = tmp_path / "release"
    async with _stack(tmp_path, old) as stack:
        await _warm(stack, old)
        answers: dict[int, str] = {}
        async with stack.connect("old", "auto") as client, anyio.create_task_group() as tasks:
            markers = [tmp_path / f"hold-{i}" for i in range(3)]

            async def call(i: int) -> None:
                result = await client.call_tool("hold", {"marker": str(markers[i]), "release": str(release)})
                answers[i] = text_of(result)

            for i in range(3):  # each starts while the previous ones are still running upstream
                tasks.start_soon(call, i)
                await eventually(_exists(markers[i]), what="held")
            in_flight = [marker.read_text() for marker in markers]
            release.touch()
        assert len(set(in_flight)) == 3 and all(in_flight), in_flight
        assert answers == {i: f"released {in_flight[i]}" for i in range(3)}
        # All three go back to the caller's idle ones: its next calls reuse them, one by one.
        assert await session_seen(stack) in in_flight


# Defects -----------------------------------------------------------------------------------


async def test_a_timed_out_call_leaves_no_upstream_session_behind(tmp_path: Path, old: ServerProcess) -> None:
    """A timeout makes ``_guarded`` call ``failed()``, which drains every idle session of
    every caller without a DELETE: the upstream keeps them (an SDK server for 30 min)."""
    async with _stack(tmp_path, old, TETHER_MCP_CALL_TIMEOUT="3") as stack:
        watcher = await _warm(stack, old)
        alice = await session_seen(stack)  # pooled, idle
        assert await _held(old) - watcher == {alice}
        marker = tmp_path / "slow"
        async with stack.connect("old", "auto", headers=_bearer(stack, "bob")) as client:
            result = await client.call_tool(
                "hold", {"marker": str(marker), "release": str(tmp_path / "never")}
            )
        assert result.is_error and "timed out" in text_of(result)
        bob = marker.read_text()
    # A graceful stop closes what the gateway kept: nothing the gateway opened may remain.
    assert await _held(old) - watcher == set(), f"left open on the upstream (alice={alice}, bob={bob})"


async def test_an_oversize_answer_leaves_no_upstream_session_behind(
    tmp_path: Path, old: ServerProcess
) -> None:
    """An SSE answer over the message limit is ``CONNECTION_CLOSED`` in ``_from_events``, so
    ``session_for`` neither keeps nor closes the session: one leaked per oversize answer."""
    async with _stack(tmp_path, old, TETHER_MCP_MAX_MESSAGE_BYTES="32768") as stack:
        watcher = await _warm(stack, old)
        async with stack.connect("old", "auto") as client:
            for _ in range(3):
                with pytest.raises(MCPError, match="message limit"):
                    await client.call_tool("blob", {"size": 100_000})
            opened = await _held(old) - watcher
    left = await _held(old) - watcher
    assert left == set(), f"{len(opened)} sessions held after 3 oversize answers; {len(left)} after stop"


async def test_a_caller_whose_idle_sessions_the_upstream_forgot_still_gets_itsanswer_of(
    tmp_path: Path, old: ServerProcess
) -> None:
    """The upstream restarted (or expired them): every idle session of the caller is gone.
    ``_in_session`` retries once, but takes the next idle (also gone) session instead of
    opening one, so a caller who ever had two calls at once gets "Session terminated"."""
    release = tmp_path / "release"
    async with _stack(tmp_path, old) as stack:
        await _warm(stack, old)
        markers = [tmp_path / "one", tmp_path / "two"]
        async with stack.connect("old", "auto") as client, anyio.create_task_group() as tasks:
            for marker in markers:
                tasks.start_soon(client.call_tool, "hold", {"marker": str(marker), "release": str(release)})
                await eventually(_exists(marker), what="held")
            release.touch()
        idle = [marker.read_text() for marker in markers]
        for session in idle:  # what an upstream restart does to them
            forgotten = httpx2.delete(
                old.mcp_url, headers={"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
            )
            assert forgotten.status_code < 300
        async with stack.connect("old", "auto") as client:
            try:
                result = await client.call_tool("seen_header", {"name": "mcp-session-id"})
            except MCPError as exc:
                error = f"observed: JSON-RPC error {exc.code} {exc.message!r}"
            else:
                error = ""
        assert not error, error
        assert text_of(result) not in idle


async def test_a_call_cancelled_while_its_session_opens_leaves_no_upstream_session_behind(
    tmp_path: Path, old: ServerProcess, hang_flag: Path
) -> None:
    """``_open`` runs outside ``session_for``'s try: cancelled (client gone, or the call's
    timeout) after ``initialize`` created the session upstream, nobody closes it."""
    async with _stack(tmp_path, old) as stack:
        watcher = await _warm(stack, old)
        before = await _held(old)
        await anyio.to_thread.run_sync(hang_flag.touch)
        async with (
            stack.connect("old", "auto", headers=_bearer(stack, "carol")) as client,
            anyio.create_task_group() as tasks,
        ):
            tasks.start_soon(client.call_tool, "seen_header", {"name": "mcp-session-id"})

            async def opened() -> set[str]:
                return await _held(old) - before

            half_open = await eventually(opened, what="initialize answered, initialized pending")
            tasks.cancel_scope.cancel()
        await anyio.to_thread.run_sync(hang_flag.unlink)
        assert await session_seen(stack, _bearer(stack, "carol"))  # the caller goes on, in a new session
    left = await _held(old) - watcher
    assert left == set(), f"half-open session {half_open} left on the upstream: {left}"


async def test_a_session_in_use_when_the_upstream_is_replaced_is_closed(
    tmp_path: Path, old: ServerProcess
) -> None:
    """A registry change (here the URL: the same server by another name) replaces the
    ``HttpUpstream``; its ``aclose`` closes only the idle sessions, and a call still running
    loses its connection (or returns its session to the retired books): that session is
    never closed."""
    release = tmp_path / "release"
    marker = tmp_path / "held"
    async with _stack(tmp_path, old) as stack:
        await _warm(stack, old)
        server_id = stack.get("/v1/mcp_servers")["data"][0]["id"]
        async with stack.connect("old", "auto") as client, anyio.create_task_group() as tasks:
            outcome: list[Any] = []

            async def call() -> None:
                outcome.append(
                    await client.call_tool("hold", {"marker": str(marker), "release": str(release)})
                )

            tasks.start_soon(call)
            await eventually(_exists(marker), what="held")
            in_use = marker.read_text()
            moved = old.mcp_url.replace("127.0.0.1", "localhost")
            await anyio.to_thread.run_sync(
                stack.post, f"/v1/mcp_servers/{server_id}", {"transport": {"type": "url", "url": moved}}
            )
            release.touch()
        assert outcome
        assert await session_seen(stack) != in_use  # the new upstream's own session
    # (The new upstream's watcher session may outlive the stop, as the first one's does.)
    assert in_use not in await _held(old), f"session {in_use} left open; the call got {text_of(outcome[0])!r}"


class _BlackHole(httpx2.AsyncBaseTransport):
    """An upstream that accepts connections and never answers (stopped, or partitioned)."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def _no_headers() -> dict[str, str]:
    return {}


async def _no_change(kinds: frozenset[str]) -> None:
    return None


async def test_closing_an_unresponsive_upstream_keeps_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """``aclose`` ends its sessions within ``STOP_TIMEOUT / 3`` even when the upstream never
    answers: the DELETEs go side by side and none is shielded from that deadline (it once
    waited ABANDON_TIMEOUT per idle session, up to 2 s x every session kept)."""
    monkeypatch.setattr(http_upstream, "STOP_TIMEOUT", 0.6)  # a bound of 0.2 s
    monkeypatch.setattr(wire, "ABANDON_TIMEOUT", 0.25)
    body = {"name": "dead", "transport": {"type": "url", "url": "http://upstream.invalid/mcp"}}
    upstream = HttpUpstream(body, CircuitBreaker(2, 1.0), lambda url: _BlackHole(), _no_headers, _no_change)
    upstream._handshake = "2025-11-25"  # learnt from an earlier use
    async with upstream.wire({}, 1.0, SizeWatch(1024), Era("2025-11-25", session_based=True)):
        pass
    for i in range(8):
        upstream.sessions.give_back(UpstreamSession(f"s{i}", "2025-11-25", (f"caller{i}", ""), {}))
    started = time.monotonic()
    await upstream.aclose()
    took = time.monotonic() - started
    assert took < 1.0, f"aclose took {took:.2f}s for 8 idle sessions (bound 0.2 s)"


# Behaviour equal to the SDK path ---------------------------------------------------------

VOLATILE_AUDIT = ("id", "created_at", "latency_ms")


CASES = {
    "warm-up": tools_call("add", {"a": 0, "b": 0}),
    **SHARED_CASES,
    "resumed answer": tools_call("polled_blob", {"size": 300}),
    "oversize": tools_call("blob", {"size": 100_000}),
}


@pytest.fixture(scope="module")
def lanes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayStack]]:
    resumable = start_server(
        ["--label", "alpha", "--port", "0", "--legacy-only", "--resumable"],
        module="tests.support.mcp_gateway_upstream",
    )
    limits = {"TETHER_MCP_CALL_TIMEOUT": "10", "TETHER_MCP_MAX_MESSAGE_BYTES": "32768"}
    try:
        # "alpha": the test policy's rules apply
        with both_lanes(tmp_path_factory, {"alpha": resumable}, {"old": "alpha"}, limits) as stacks:
            yield stacks
    finally:
        resumable.stop()


def _post(stack: GatewayStack, message: dict[str, Any]) -> httpx2.Response:
    sent = {
        "x-api-key": stack.api_key,
        "mcp-protocol-version": VERSION,
        "accept": "application/json, text/event-stream",
        "mcp-method": message["method"],
        "mcp-name": message["params"]["name"],
    }
    return httpx2.post(stack.mcp_url("old"), json=message, headers=sent, timeout=30)


def _audit(stack: GatewayStack) -> list[str]:
    records = stack.get("/v1/mcp_audit?limit=100")["data"]
    return sorted(
        json.dumps(
            {key: value for key, value in record.items() if key not in VOLATILE_AUDIT}
            | {"caller": {k: v for k, v in record["caller"].items() if k != "id"}}
            | {"detail": re.sub(r"\S+/policy\.yaml", "policy.yaml", record["detail"] or "")},
            sort_keys=True,
        )
        for record in records
    )


def test_a_session_based_upstream_answers_alike_in_both_lanes(lanes: dict[str, GatewayStack]) -> None:
    answers = {
        case: {lane: answer_of(_post(stack, message)) for lane, stack in lanes.items()}
        for case, message in CASES.items()
    }
    differ = {case: seen for case, seen in answers.items() if seen["express"] != seen["sdk"]}
    assert not differ, json.dumps(differ, indent=1)[:3000]
    assert text_of_last(answers["resumed answer"]["express"]) == "a" * 300
    assert _audit(lanes["express"]) == _audit(lanes["sdk"])


def text_of_last(answer: tuple[int, str, list[Any]]) -> str:
    return "".join(block.get("text", "") for block in answer[2][-1]["result"]["content"])
