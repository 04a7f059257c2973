"""Pooled sessions with a session-based upstream (the express lane's per-caller mode).

A 2026-07-28 client calling through the gateway a tool of ``old`` (a 2025-11-25-only
server) gets an upstream session that its later calls reuse, never one another caller
uses; a session the upstream forgot is replaced without failing the call; sessions end
when the gateway stops. ``seen_header`` answers with the session id the upstream saw.
``UpstreamSessions`` keeps the books, tested on its own with a given clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from gateway.mcp_gateway import upstream_sessions
from gateway.mcp_gateway.upstream_sessions import UpstreamSession, UpstreamSessions, owner_of
from tests.support.mcp_gateway_stack import GatewayStack, start_upstream
from tests.support.mcp_gateway_stack import upstream_sessions as held
from tests.support.mcp_lanes import one_upstream_gateway, session_seen, watcher_sessions
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.anyio


@pytest.fixture
def old() -> Iterator[ServerProcess]:
    server = start_upstream("old", legacy_only=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def stack(tmp_path: Path, old: ServerProcess) -> Iterator[GatewayStack]:
    with one_upstream_gateway(tmp_path / "gw", old) as stack:
        yield stack


async def test_a_callers_calls_share_one_upstream_session_and_callers_never_share(
    stack: GatewayStack, old: ServerProcess
) -> None:
    watcher = watcher_sessions(old)
    first = await session_seen(stack)
    assert first and first in held(old)
    assert [await session_seen(stack) for _ in range(5)] == [first] * 5
    other = {"authorization": f"Bearer {stack.token('someone-else', 'old')}"}
    theirs = await session_seen(stack, other)
    assert theirs and theirs != first
    assert await session_seen(stack, other) == theirs
    assert held(old) - watcher == {first, theirs}  # two callers, two sessions: none per call


async def test_a_session_the_upstream_forgot_is_replaced_without_failing_the_call(
    stack: GatewayStack, old: ServerProcess
) -> None:
    watcher = watcher_sessions(old)
    first = await session_seen(stack)
    ended = httpx2.delete(
        old.url + "/mcp", headers={"mcp-session-id": first, "mcp-protocol-version": "2025-11-25"}, timeout=10
    )
    assert ended.status_code < 300 and first not in held(old)
    second = await session_seen(stack)  # the upstream answers 404 for `first`: a new one, same call
    assert second and second != first and held(old) - watcher == {second}
    audit = stack.get("/v1/mcp_audit?virtual_server=old&limit=100")["data"]
    assert [record["outcome"] for record in audit] == ["ok", "ok"]


async def test_stopping_the_gateway_ends_its_upstream_sessions(
    stack: GatewayStack, old: ServerProcess
) -> None:
    watcher = watcher_sessions(old)
    await session_seen(stack)
    await session_seen(stack, {"authorization": f"Bearer {stack.token('another', 'old')}"})
    assert len(held(old) - watcher) == 2
    stack.gateway.stop()  # SIGTERM: a graceful stop closes what the pool kept
    assert held(old) - watcher == set()


def _session(owner: tuple[str, str], name: str) -> UpstreamSession:
    return UpstreamSession(name, "2025-11-25", owner, {})


def test_the_books_keep_each_owners_sessions_apart_and_bounded() -> None:
    now = [100.0]
    books = UpstreamSessions(clock=lambda: now[0])
    alice, bob = owner_of("alice", {"authorization": "Bearer a"}), owner_of("bob", {})
    assert owner_of("alice", {"Authorization": "Bearer b"}) != alice  # another credential, another owner
    assert books.take(alice) is None
    sessions = [_session(alice, f"a{i}") for i in range(upstream_sessions.PER_OWNER + 2)]
    for session in sessions:
        books.opened(session)
        books.give_back(session)
    assert [s.session_id for s in books.to_close()] == ["a0", "a1"]  # beyond PER_OWNER, the longest idle
    assert books.take(bob) is None
    assert books.take(alice) is sessions[-1]  # the most recently used first
    bobs = _session(bob, "b0")
    books.opened(bobs)
    books.give_back(bobs)
    now[0] += upstream_sessions.IDLE_SECONDS
    books.expire()
    kept = {f"a{i}" for i in range(2, upstream_sessions.PER_OWNER + 1)}  # all but the one taken
    assert {s.session_id for s in books.to_close()} == kept | {"b0"}
    assert books.count() == 0 and books.take(alice) is None
    # The one still in use is closed with the books, and its late return ignored.
    assert books.close_all() == [sessions[-1]]
    books.give_back(sessions[-1])
    assert books.count() == 0 and books.to_close() == []


def test_the_books_bound_every_owner_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream_sessions, "MAX_IDLE", 3)
    clock = iter(range(100))
    books = UpstreamSessions(clock=lambda: float(next(clock)))
    for i in range(5):
        session = _session((f"caller{i}", ""), f"s{i}")
        books.opened(session)
        books.give_back(session)
    assert [s.session_id for s in books.to_close()] == ["s0", "s1"] and books.count() == 3
    failed = _session(("caller9", ""), "s9")
    books.opened(failed)
    books.discard(failed)  # a failure during its call
    books.drain()  # the upstream failed: every idle one goes too
    assert {s.session_id for s in books.to_close()} == {"s2", "s3", "s4", "s9"} and books.count() == 0
