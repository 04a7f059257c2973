"""One conformance suite for every ``Store`` backend: SQLite (the reference) and PostgreSQL.

Each test gets a fresh store. Nothing here sleeps to synchronise: waiters report when
they have checked the log (see ``wait_during``) and ``anyio.fail_after`` bounds every
wait. Expired leases are made with a negative TTL instead of waiting for a clock.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from gateway.store import open_store
from gateway.store.base import Body, EventQuery, LeaseLost, Store
from gateway.store.chain import GENESIS, verify
from gateway.store.pg_listener import LISTENER_APPLICATION_NAME
from gateway.store.pg_schema import MIGRATIONS, migrate
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore
from tests.support.postgres import empty_store, fresh_database

pytestmark = pytest.mark.anyio

BOUND = 5.0
"""Upper bound for anything that should happen promptly; a hang fails instead of stalling CI."""

EXPIRED = -10.0
"""A TTL that makes a lease expired the moment it is granted."""

DUPLICATE_KEY = (sqlite3.IntegrityError, asyncpg.UniqueViolationError)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with empty_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    async with fresh_database() as dsn:
        yield dsn


def ts(n: int) -> str:
    return f"2024-05-01T00:00:{n:02d}.000000Z"


def resource(resource_id: str, created_at: str = ts(0), **fields: Any) -> Body:
    return {"id": resource_id, "created_at": created_at, **fields}


def event(event_id: str, type_: str = "user.message", processed_at: str = ts(0)) -> Body:
    return {
        "id": event_id,
        "type": type_,
        "processed_at": processed_at,
        "content": [{"type": "text", "text": f"hello from {event_id}"}],
    }


def ids(page_items: list[Body]) -> list[str]:
    return [item["id"] for item in page_items]


async def wait_during(
    store: Store,
    session_id: str,
    after_seq: int,
    timeout: float,
    action: Callable[[MemoryObjectReceiveStream[int]], Awaitable[object]],
) -> bool:
    """Run ``wait_for_append`` and, once it has read the log (so is about to sleep), ``action``.

    Every ``last_seq`` the waiter reads is reported on the stream ``action`` receives, so
    a test appends only after the waiter's check instead of sleeping and hoping.
    """
    send, receive = anyio.create_memory_object_stream[int](100)
    original: Callable[[str], Awaitable[int]] = store.last_seq
    woke: list[bool] = []

    async def last_seq(session_id: str) -> int:
        value = await original(session_id)
        send.send_nowait(value)
        return value

    async def wait() -> None:
        woke.append(await store.wait_for_append(session_id, after_seq, timeout))

    with send, receive, pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "last_seq", last_seq)
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await receive.receive()
                await action(receive)
    return woke[0]


# Resources -------------------------------------------------------------------------------


async def test_insert_get_update_delete(store: Store) -> None:
    body = resource("sesn_1", status="idle", metadata={"k": "v"}, usage={"n": 1.5})
    await store.insert("session", body)
    assert await store.get("session", "sesn_1") == body
    assert await store.get("agent", "sesn_1") is None
    assert await store.get("session", "sesn_missing") is None

    updated = await store.update("session", "sesn_1", lambda b: {**b, "status": "running"})
    assert updated == {**body, "status": "running"}
    assert await store.get("session", "sesn_1") == updated
    assert await store.update("session", "sesn_missing", lambda b: b) is None

    def refuse(_: Body) -> Body:
        raise ValueError("abort")

    with pytest.raises(ValueError, match="abort"):
        await store.update("session", "sesn_1", refuse)
    assert await store.get("session", "sesn_1") == updated

    assert await store.delete("session", "sesn_1") is True
    assert await store.get("session", "sesn_1") is None
    assert await store.delete("session", "sesn_1") is False


async def test_ids_are_unique(store: Store) -> None:
    await store.insert("session", resource("sesn_1"))
    with pytest.raises(DUPLICATE_KEY):
        await store.insert("session", resource("sesn_1"))


async def test_insert_many_writes_all_or_none(store: Store) -> None:
    bodies = [resource(f"rec_{i}", n=i) for i in range(5)]
    await store.insert_many("mcp_audit", bodies)
    assert [await store.get("mcp_audit", f"rec_{i}") for i in range(5)] == bodies
    with pytest.raises(DUPLICATE_KEY):
        await store.insert_many("mcp_audit", [resource("rec_new"), resource("rec_3")])  # rec_3 exists
    assert await store.get("mcp_audit", "rec_new") is None  # the batch failed as a whole
    await store.insert_many("mcp_audit", [])


async def test_concurrent_updates_lose_nothing(store: Store) -> None:
    await store.insert("environment", resource("env_1", count=0))

    async def increment() -> None:
        await store.update("environment", "env_1", lambda b: {**b, "count": b["count"] + 1})

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(increment)
    assert (await store.get("environment", "env_1") or {})["count"] == 20


async def test_list_pagination_both_orders(store: Store) -> None:
    for n in range(1, 6):
        await store.insert("environment", resource(f"env_{n}"))
    await store.insert("agent", resource("agent_other"))

    async def walk(order: Any) -> list[list[str]]:
        pages, cursor = [], None
        while True:
            page = await store.list_resources(
                "environment", cursor=cursor, limit=2, include_archived=False, order=order
            )
            pages.append(ids(page.items))
            if page.next_cursor is None:
                return pages
            cursor = page.next_cursor

    assert await walk("desc") == [["env_5", "env_4"], ["env_3", "env_2"], ["env_1"]]
    assert await walk("asc") == [["env_1", "env_2"], ["env_3", "env_4"], ["env_5"]]
    exact = await store.list_resources("environment", cursor=None, limit=5, include_archived=False)
    assert len(exact.items) == 5 and exact.next_cursor is None


async def test_list_include_archived(store: Store) -> None:
    await store.insert("agent", resource("agent_1"))
    await store.insert("agent", resource("agent_2", archived_at=ts(1)))
    await store.insert("agent", resource("agent_3"))
    await store.update("agent", "agent_3", lambda b: {**b, "archived_at": ts(2)})
    await store.update("agent", "agent_2", lambda b: {**b, "archived_at": None})

    live = await store.list_resources("agent", cursor=None, limit=10, include_archived=False)
    every = await store.list_resources("agent", cursor=None, limit=10, include_archived=True)
    assert ids(live.items) == ["agent_2", "agent_1"]
    assert ids(every.items) == ["agent_3", "agent_2", "agent_1"]


async def test_list_equals_filters(store: Store) -> None:
    await store.insert("session", resource("s1", agent={"id": "agent_a", "version": 1}, scope={"id": "x"}))
    await store.insert("session", resource("s2", agent={"id": "agent_a", "version": 2}, environment_id="e"))
    await store.insert("session", resource("s3", agent={"id": "agent_b", "version": 1}))
    await store.insert("session", resource("s4", agent={"id": "agent_a", "version": "1"}))

    async def matching(equals: dict[str, Any], limit: int = 10) -> list[str]:
        page = await store.list_resources(
            "session", cursor=None, limit=limit, include_archived=False, equals=equals
        )
        return ids(page.items)

    assert await matching({"agent.id": "agent_a"}) == ["s4", "s2", "s1"]
    assert await matching({"agent.id": "agent_a", "agent.version": 1}) == ["s1"]
    # Typed like json_extract: the number 1 and the string "1" never match each other.
    assert await matching({"agent.version": 1}) == ["s3", "s1"]
    assert await matching({"agent.version": "1"}) == ["s4"]
    assert await matching({"scope.id": "x"}) == ["s1"]
    assert await matching({"environment_id": "e"}) == ["s2"]
    assert await matching({"agent.id": "agent_c"}) == []
    assert await matching({"no.such.path": "x"}) == []
    assert await matching({}) == ["s4", "s3", "s2", "s1"]

    first = await store.list_resources(
        "session", cursor=None, limit=1, include_archived=False, equals={"agent.version": 1}
    )
    assert ids(first.items) == ["s3"] and first.next_cursor is not None
    rest = await store.list_resources(
        "session", cursor=first.next_cursor, limit=1, include_archived=False, equals={"agent.version": 1}
    )
    assert ids(rest.items) == ["s1"] and rest.next_cursor is None


async def test_list_created_range(store: Store) -> None:
    for n in range(1, 6):
        await store.insert("session", resource(f"s{n}", created_at=ts(n)))

    async def created(gte: str | None, lte: str | None) -> list[str]:
        page = await store.list_resources(
            "session",
            cursor=None,
            limit=10,
            include_archived=False,
            created_gte=gte,
            created_lte=lte,
            order="asc",
        )
        return ids(page.items)

    assert await created(ts(2), None) == ["s2", "s3", "s4", "s5"]
    assert await created(None, ts(2)) == ["s1", "s2"]
    assert await created(ts(2), ts(4)) == ["s2", "s3", "s4"]
    assert await created("2024-05-01T00:00:02.000001Z", "2024-05-01T00:00:03.999999Z") == ["s3"]
    assert await created(ts(9), None) == []


async def test_list_one_of_not_null_and_text_filters(store: Store) -> None:
    await store.insert("session", resource("sesn_a", status="idle", title="Quarterly Report", metadata={}))
    await store.insert("session", resource("sesn_b", status="running", title=None, metadata={"t": "ZX-42"}))
    await store.insert(
        "session", resource("sesn_c", status="idle", title="100% done", tether_attention="error")
    )
    await store.insert(
        "session", resource("sesn_d", status="terminated", tether_attention=None, metadata=None)
    )

    async def matching(cursor: int | None = None, limit: int = 10, **filters: Any) -> list[str]:
        page = await store.list_resources(
            "session", cursor=cursor, limit=limit, include_archived=False, **filters
        )
        return ids(page.items)

    assert await matching(one_of={"status": ["idle"]}) == ["sesn_c", "sesn_a"]
    assert await matching(one_of={"status": ["idle", "terminated"]}) == ["sesn_d", "sesn_c", "sesn_a"]
    assert await matching(one_of={"status": []}) == []
    # Missing and JSON null both count as null.
    assert await matching(not_null=["tether_attention"]) == ["sesn_c"]
    assert await matching(not_null=["title"]) == ["sesn_c", "sesn_a"]
    # Case-insensitive substring of the id, the title or a metadata value; wildcards are literal.
    assert await matching(text="quarterly report") == ["sesn_a"]
    assert await matching(text="zx-4") == ["sesn_b"]
    assert await matching(text="N_D") == ["sesn_d"]
    assert await matching(text="0%") == ["sesn_c"]
    assert await matching(text="%") == ["sesn_c"]
    assert await matching(text="n_%") == []
    assert await matching(text="sesn", one_of={"status": ["idle"]}, not_null=["title"]) == [
        "sesn_c",
        "sesn_a",
    ]
    # The cursor of a filtered page continues the same filtered query.
    first = await store.list_resources(
        "session", cursor=None, limit=1, include_archived=False, one_of={"status": ["idle", "terminated"]}
    )
    assert ids(first.items) == ["sesn_d"] and first.next_cursor is not None
    assert await matching(cursor=first.next_cursor, limit=5, one_of={"status": ["idle", "terminated"]}) == [
        "sesn_c",
        "sesn_a",
    ]


async def test_appends_keep_the_attention_flag(store: Store) -> None:
    await store.insert("session", resource("sesn_1", status="idle"))

    async def attention(*events: Body) -> Any:
        await store.append_events("sesn_1", list(events))
        return (await store.get("session", "sesn_1") or {}).get("tether_attention")

    n = itertools.count()

    def ev(type_: str, **fields: Any) -> Body:
        return {**event(f"e{next(n)}"), "type": type_, **fields}

    idle = "session.status_idle"
    asked = ev(idle, stop_reason={"type": "requires_action", "event_ids": ["x"]})
    assert await attention(ev("session.status_running"), asked) == "requires_action"
    assert await attention(ev("user.message")) == "requires_action"  # no status event: unchanged
    assert await attention(ev(idle, stop_reason={"type": "end_turn"})) is None
    error = ev("session.error", error={"type": "x", "message": "m", "retry_status": {"type": "terminal"}})
    assert await attention(ev("session.status_running"), error) == "error"
    # Ending the turn keeps the trace of an error in it; the next run clears it.
    assert await attention(ev(idle, stop_reason={"type": "end_turn"})) == "error"
    retrying = ev("session.error", error={"type": "x", "message": "m", "retry_status": {"type": "retrying"}})
    assert await attention(ev("session.status_running"), retrying) is None
    assert await attention(ev(idle, stop_reason={"type": "retries_exhausted"})) == "retries_exhausted"
    assert await attention(ev("session.status_rescheduled")) is None
    assert await attention(ev("session.status_terminated")) == "error"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_opening_a_store_backfills_attention_logged_before_it_was_kept(
    backend: str, tmp_path: Path
) -> None:
    """A session already waiting when the gateway was upgraded gets no further append: the
    store's migration must derive ``tether_attention`` from its log, by the append's rule."""
    n = itertools.count()

    def ev(type_: str, **fields: Any) -> Body:
        return {**event(f"e{next(n)}"), "type": type_, **fields}

    idle = "session.status_idle"
    failed = ev("session.error", error={"type": "x", "message": "m", "retry_status": {"type": "terminal"}})
    logs = {
        "sesn_waits": [
            ev("session.status_running"),
            ev(idle, stop_reason={"type": "requires_action", "event_ids": ["x"]}),
            ev("user.message"),
        ],
        "sesn_failed": [ev("session.status_running"), failed, ev(idle, stop_reason={"type": "end_turn"})],
        "sesn_done": [
            ev("session.status_running"),
            ev(idle, stop_reason={"type": "requires_action", "event_ids": ["y"]}),
            ev("session.status_running"),
            ev(idle, stop_reason={"type": "end_turn"}),
        ],
        "sesn_quiet": [],
    }
    expected = {
        "sesn_waits": "requires_action",
        "sesn_failed": "error",
        "sesn_done": None,
        "sesn_quiet": None,
    }

    async def filled(url: str) -> None:
        opened = await open_store(url)
        try:
            for session_id, events in logs.items():
                await opened.insert("session", resource(session_id, status="idle"))
                for one in events:  # one append each, like the harness
                    await opened.append_events(session_id, [one])
        finally:
            await opened.close()

    async def attention(url: str) -> tuple[dict[str, Any], list[str]]:
        opened = await open_store(url)
        try:
            values = {sid: (await opened.get("session", sid) or {}).get("tether_attention") for sid in logs}
            page = await opened.list_resources(
                "session", cursor=None, limit=10, include_archived=False, not_null=["tether_attention"]
            )
            return values, sorted(ids(page.items))
        finally:
            await opened.close()

    if backend == "sqlite":
        url = f"sqlite://{tmp_path}/store.db"
        await filled(url)
        db = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
        db.execute("UPDATE resources SET body = json_remove(body, '$.tether_attention')")
        db.execute("PRAGMA user_version = 0")  # as the file was before the migration existed
        db.close()
        assert await attention(url) == (expected, ["sesn_failed", "sesn_waits"])
        return
    async with fresh_database() as dsn:
        await filled(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("UPDATE resources SET body = body - 'tether_attention'")
            await conn.execute("DELETE FROM schema_migrations WHERE version = 3")
        finally:
            await conn.close()
        assert await attention(dsn) == (expected, ["sesn_failed", "sesn_waits"])


# Agents ----------------------------------------------------------------------------------


async def test_agent_versions_recorded_only_when_version_changes(store: Store) -> None:
    await store.insert_agent(resource("agent_1", version=1, name="first"))
    assert await store.get_agent_version("agent_1", 1) == resource("agent_1", version=1, name="first")

    same = await store.update_agent("agent_1", lambda b: {**b, "name": "renamed"})
    assert same is not None and same["version"] == 1
    versions = await store.list_agent_versions("agent_1", cursor=None, limit=10)
    assert [v["name"] for v in versions.items] == ["first"]

    def bump(body: Body) -> Body:
        return {**body, "version": body["version"] + 1, "name": f"v{body['version'] + 1}"}

    for _ in range(2):
        await store.update_agent("agent_1", bump)
    assert (await store.get("agent", "agent_1") or {})["name"] == "v3"
    assert (await store.get_agent_version("agent_1", 2) or {})["name"] == "v2"
    assert await store.get_agent_version("agent_1", 9) is None
    assert await store.update_agent("agent_missing", lambda b: b) is None

    first = await store.list_agent_versions("agent_1", cursor=None, limit=2)
    assert [v["version"] for v in first.items] == [3, 2] and first.next_cursor is not None
    rest = await store.list_agent_versions("agent_1", cursor=first.next_cursor, limit=2)
    assert [v["version"] for v in rest.items] == [1] and rest.next_cursor is None
    assert ids((await store.list_resources("agent", cursor=None, limit=5, include_archived=False)).items) == [
        "agent_1"
    ]


# The session log -------------------------------------------------------------------------


async def test_append_and_read_every_query_option(store: Store) -> None:
    appended = await store.append_events(
        "sesn_1", [event(f"e{n}", "A" if n % 2 else "B", ts(n)) for n in range(1, 7)]
    )
    assert [(e.seq, e.id, e.type) for e in appended] == [
        (n, f"e{n}", "A" if n % 2 else "B") for n in range(1, 7)
    ]

    async def seqs(**options: Any) -> list[int]:
        return [e.seq for e in await store.read_events("sesn_1", EventQuery(**options))]

    everything = await store.read_events("sesn_1", EventQuery())
    assert [(e.seq, e.id, e.type, e.body) for e in everything] == [
        (e.seq, e.id, e.type, e.body) for e in appended
    ]
    at = {e.seq: e.body["processed_at"] for e in everything}  # assigned at commit
    assert everything[0].body == event("e1", "A", at[1]) and everything[0].session_id == "sesn_1"
    assert await seqs(after_seq=2) == [3, 4, 5, 6]
    assert await seqs(before_seq=4) == [1, 2, 3]
    assert await seqs(after_seq=1, before_seq=5) == [2, 3, 4]
    assert await seqs(limit=2) == [1, 2]
    assert await seqs(order="desc") == [6, 5, 4, 3, 2, 1]
    assert await seqs(order="desc", before_seq=4, limit=2) == [3, 2]
    assert await seqs(types=["B"]) == [2, 4, 6]
    assert await seqs(types=["A", "B"]) == [1, 2, 3, 4, 5, 6]
    assert await seqs(types=["C"]) == []
    assert await seqs(processed_after=at[3]) == [4, 5, 6]
    assert await seqs(processed_after=at[3], processed_after_inclusive=True) == [3, 4, 5, 6]
    assert await seqs(processed_before=at[3]) == [1, 2]
    assert await seqs(processed_before=at[3], processed_before_inclusive=True) == [1, 2, 3]
    assert await seqs(
        types=["A"],
        processed_after=at[2],
        processed_after_inclusive=True,
        processed_before=at[5],
    ) == [3]
    assert await store.read_events("sesn_other", EventQuery()) == []


async def test_seqs_per_session_event_seq_and_last_seq(store: Store) -> None:
    assert await store.last_seq("sesn_1") == 0
    await store.append_events("sesn_1", [event("a1"), event("a2")])
    other = await store.append_events("sesn_2", [event("b1")])
    third = await store.append_events("sesn_1", [event("a3")])
    assert [e.seq for e in other] == [1] and [e.seq for e in third] == [3]
    assert await store.last_seq("sesn_1") == 3
    assert await store.last_seq("sesn_2") == 1
    assert await store.event_seq("sesn_1", "a2") == 2
    assert await store.event_seq("sesn_2", "a2") is None
    assert await store.event_seq("sesn_1", "nope") is None
    assert await store.append_events("sesn_1", []) == []
    assert await store.last_seq("sesn_1") == 3


async def test_failed_append_leaves_no_trace_and_no_gap(store: Store) -> None:
    await store.append_events("sesn_1", [event("e1")])
    with pytest.raises(DUPLICATE_KEY):
        await store.append_events("sesn_1", [event("e2"), event("e1")])
    assert await store.last_seq("sesn_1") == 1
    assert await store.event_seq("sesn_1", "e2") is None
    [second] = await store.append_events("sesn_1", [event("e2")])
    assert second.seq == 2
    assert verify("sesn_1", await store.read_chain("sesn_1")).ok


async def test_hash_chain_links_every_event(store: Store) -> None:
    first = await store.append_events("sesn_1", [event("e1"), event("e2")])
    # Numbers that jsonb stores differently from how Python prints them must still verify.
    odd = {**event("e3"), "numbers": [1e16, 1.5e300, 1e-7, -0.0, 0.1, 2**70]}
    appended = first + await store.append_events("sesn_1", [odd])
    assert appended[0].prev_hash == GENESIS
    assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(appended))

    links = await store.read_chain("sesn_1")
    assert [(link.seq, link.event_id, link.prev_hash, link.hash) for link in links] == [
        (e.seq, e.id, e.prev_hash, e.hash) for e in appended
    ]
    verdict = verify("sesn_1", links)
    assert verdict.ok and verdict.events == 3 and verdict.head == appended[-1].hash
    assert await store.read_chain("sesn_other") == []


async def test_read_events_carry_the_chain(store: Store) -> None:
    appended = await store.append_events("sesn_1", [event("e1"), event("e2")])
    assert await store.read_events("sesn_1", EventQuery()) == appended


async def test_status_events_move_the_session_status_in_the_same_append(store: Store) -> None:
    await store.insert("session", resource("sesn_1", status="idle"))
    await store.append_events("sesn_1", [{**event("e1"), "type": "session.status_running"}])
    assert (await store.get("session", "sesn_1") or {})["status"] == "running"
    await store.append_events(
        "sesn_1", [{**event("e2"), "type": "agent.message"}, {**event("e3"), "type": "session.status_idle"}]
    )
    body = await store.get("session", "sesn_1") or {}
    committed = await store.read_events("sesn_1", EventQuery(after_seq=2))
    assert body["status"] == "idle" and body["updated_at"] == committed[-1].body["processed_at"]
    await store.append_events("sesn_1", [{**event("e4"), "type": "session.status_rescheduled"}])
    assert (await store.get("session", "sesn_1") or {})["status"] == "rescheduling"


async def test_processed_at_is_the_commit_time_and_strictly_increases_with_seq(store: Store) -> None:
    """Writers build events concurrently and out of order: a body's own time is replaced at
    commit, so time filters see exactly the events after a given one."""
    before = datetime.now(UTC)
    stale = event("e0", processed_at="2030-01-01T00:00:00.000000Z")  # a clock far ahead
    await store.append_events("sesn_1", [stale])
    async with anyio.create_task_group() as tg:
        for writer in range(8):
            for n in range(5):
                tg.start_soon(
                    store.append_events, "sesn_1", [event(f"w{writer}-{n}a"), event(f"w{writer}-{n}b")]
                )
    stored = await store.read_events("sesn_1", EventQuery())
    times = [e.body["processed_at"] for e in stored]
    assert len(times) == 81 and times == sorted(set(times)), "strictly increasing with seq"
    assert datetime.fromisoformat(times[0]) >= before
    assert times[0] < "2030", "a writer's own clock does not decide the log's times"
    for cut in (1, 40, 79):
        after = await store.read_events("sesn_1", EventQuery(processed_after=times[cut]))
        assert [e.seq for e in after] == list(range(cut + 2, 82))
    verdict = verify("sesn_1", await store.read_chain("sesn_1"))
    assert verdict.ok


async def test_concurrent_appenders_get_gap_free_seqs(store: Store) -> None:
    batches: list[list[int]] = []

    async def append(n: int) -> None:
        events = [event(f"e{n}_{i}") for i in range(n % 3 + 1)]
        batches.append([e.seq for e in await store.append_events("sesn_1", events)])

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(append, n)
    total = sum(n % 3 + 1 for n in range(20))
    assert sorted(seq for batch in batches for seq in batch) == list(range(1, total + 1))
    assert all(batch == list(range(batch[0], batch[0] + len(batch))) for batch in batches)
    assert [e.seq for e in await store.read_events("sesn_1", EventQuery())] == list(range(1, total + 1))
    assert await store.last_seq("sesn_1") == total
    assert verify("sesn_1", await store.read_chain("sesn_1")).ok


async def test_delete_session_deletes_its_log_and_lease(store: Store) -> None:
    await store.insert("session", resource("sesn_1", status="running"))
    await store.append_events("sesn_1", [event("e1"), event("e2")])
    await store.append_events("sesn_2", [event("other")])
    assert await store.acquire_lease("sesn_1", "a", 60) is not None

    assert await store.delete("session", "sesn_1")
    assert await store.read_events("sesn_1", EventQuery()) == []
    assert await store.last_seq("sesn_1") == 0
    assert await store.event_seq("sesn_1", "e1") is None
    lease = await store.acquire_lease("sesn_1", "b", 60)
    assert lease is not None and lease.generation == 1
    assert await store.last_seq("sesn_2") == 1
    [again] = await store.append_events("sesn_1", [event("e1")])
    assert (again.seq, again.prev_hash) == (1, GENESIS)


# Waiting for appends ---------------------------------------------------------------------


async def test_wait_for_append_returns_at_once_when_behind(store: Store) -> None:
    await store.append_events("sesn_1", [event("e1")])
    with anyio.fail_after(BOUND):
        assert await store.wait_for_append("sesn_1", 0, timeout=60) is True


async def test_wait_for_append_wakes_on_append(store: Store) -> None:
    async def append(_: object) -> None:
        await store.append_events("sesn_1", [event("e1")])

    assert await wait_during(store, "sesn_1", 0, 60, append) is True


async def test_wait_for_append_times_out(store: Store) -> None:
    await store.append_events("sesn_1", [event("e1")])

    async def append_elsewhere(_: object) -> None:
        await store.append_events("sesn_other", [event("other")])

    assert await wait_during(store, "sesn_1", 1, 0.2, append_elsewhere) is False


async def test_wait_for_append_ignores_appends_not_past_the_cursor(store: Store) -> None:
    """The protocol promises True only "when there is something new to read"."""
    await store.append_events("sesn_1", [event("e1")])

    async def append_short_of_cursor(_: object) -> None:
        await store.append_events("sesn_1", [event("e2")])

    assert await wait_during(store, "sesn_1", 5, 0.3, append_short_of_cursor) is False


# Leases ----------------------------------------------------------------------------------


async def test_lease_reacquire_by_owner_keeps_generation(store: Store) -> None:
    lease = await store.acquire_lease("sesn_1", "a", 60)
    assert lease is not None and (lease.session_id, lease.owner, lease.generation) == ("sesn_1", "a", 1)
    assert abs(lease.expires_at - (time.time() + 60)) < 30

    again = await store.acquire_lease("sesn_1", "a", 120)
    assert again is not None and again.generation == 1 and again.expires_at > lease.expires_at
    assert await store.acquire_lease("sesn_1", "b", 60) is None

    renewed = await store.renew_lease(again, 300)
    assert renewed.generation == 1 and renewed.expires_at > again.expires_at
    await store.append_events("sesn_1", [event("e1")], fence=renewed)
    assert await store.last_seq("sesn_1") == 1


async def test_concurrent_acquirers_exactly_one_wins(store: Store) -> None:
    async def race(session_id: str) -> list[str]:
        winners: list[str] = []

        async def acquire(owner: str) -> None:
            if await store.acquire_lease(session_id, owner, 60) is not None:
                winners.append(owner)

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(acquire, f"owner{n}")
        return winners

    assert len(await race("sesn_free")) == 1
    assert await store.acquire_lease("sesn_expired", "old", EXPIRED) is not None
    assert len(await race("sesn_expired")) == 1


async def test_lease_takeover_after_expiry_fences_the_old_owner(store: Store) -> None:
    stale = await store.acquire_lease("sesn_1", "a", EXPIRED)
    assert stale is not None and stale.generation == 1
    await store.append_events("sesn_1", [event("e1")], fence=stale)

    current = await store.acquire_lease("sesn_1", "b", 60)
    assert current is not None and current.generation == 2
    with pytest.raises(LeaseLost):
        await store.renew_lease(stale, 60)
    with pytest.raises(LeaseLost):
        await store.append_events("sesn_1", [event("e2"), event("e3")], fence=stale)
    assert await store.last_seq("sesn_1") == 1
    assert await store.event_seq("sesn_1", "e2") is None

    await store.release_lease(stale)  # a stale release must not free the new owner's lease
    assert await store.acquire_lease("sesn_1", "a", 60) is None
    assert [e.seq for e in await store.append_events("sesn_1", [event("e2")], fence=current)] == [2]


async def test_fenced_append_without_a_lease_fails(store: Store) -> None:
    other = await store.acquire_lease("sesn_2", "a", 60)
    assert other is not None
    with pytest.raises(LeaseLost):
        await store.append_events("sesn_1", [event("e1")], fence=other)
    assert await store.last_seq("sesn_1") == 0


async def test_release_hands_over_at_once(store: Store) -> None:
    first = await store.acquire_lease("sesn_1", "a", 60)
    assert first is not None
    await store.release_lease(first)

    second = await store.acquire_lease("sesn_1", "b", 60)
    assert second is not None and second.generation == first.generation + 1
    with pytest.raises(LeaseLost):
        await store.append_events("sesn_1", [event("e1")], fence=first)

    await store.release_lease(second)
    third = await store.acquire_lease("sesn_1", "b", 60)
    assert third is not None and third.generation == second.generation


async def test_sessions_needing_harness(store: Store) -> None:
    for name, status in [
        ("s1", "running"),
        ("s2", "rescheduling"),
        ("s3", "idle"),
        ("s4", "terminated"),
        ("s5", "running"),
        ("s6", "running"),
        ("s7", "rescheduling"),
    ]:
        await store.insert("session", resource(name, status=status))
    await store.insert("session", resource("s8", status="running", archived_at=ts(1)))
    await store.insert("environment", resource("env_1", status="running"))
    assert await store.acquire_lease("s5", "a", 60) is not None
    assert await store.acquire_lease("s6", "a", EXPIRED) is not None
    released = await store.acquire_lease("s7", "a", 60)
    assert released is not None
    await store.release_lease(released)

    assert await store.sessions_needing_harness(10) == ["s1", "s2", "s6", "s7"]
    assert await store.sessions_needing_harness(2) == ["s1", "s2"]


# Opening stores by URL -------------------------------------------------------------------


async def test_open_store_urls(tmp_path: Path) -> None:
    for url, created in [
        (str(tmp_path / "plain.db"), "plain.db"),
        (f"sqlite://{tmp_path}/three.db", "three.db"),
        (f"sqlite:///{tmp_path}/four.db", "four.db"),
    ]:
        opened = await open_store(url)
        assert isinstance(opened, SQLiteStore)
        await opened.close()
        assert (tmp_path / created).is_file()
    with pytest.raises(ValueError, match="absolute"):
        await open_store("sqlite://relative.db")
    with pytest.raises(ValueError, match="scheme"):
        await open_store("mysql://localhost/tether")


# PostgreSQL only: several processes sharing one database ---------------------------------


async def test_pg_append_in_one_process_wakes_another(pg_dsn: str) -> None:
    writer, reader = await PostgresStore.connect(pg_dsn), await PostgresStore.connect(pg_dsn)
    try:

        async def append(_: object) -> None:
            await writer.append_events("sesn_1", [event("e1")])

        assert await wait_during(reader, "sesn_1", 0, 60, append) is True
    finally:
        await writer.close()
        await reader.close()


async def test_pg_listener_reconnects_and_rechecks(pg_dsn: str) -> None:
    writer, reader = await PostgresStore.connect(pg_dsn), await PostgresStore.connect(pg_dsn)
    try:

        async def drop_listeners_then_append(checks: MemoryObjectReceiveStream[int]) -> None:
            killed = await writer._pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = $1",
                LISTENER_APPLICATION_NAME,
            )
            assert killed == 2
            # The reconnected listener wakes every waiter to re-check what it may have missed.
            assert await checks.receive() == 0
            assert reader._listener.connects == 2
            await writer.append_events("sesn_1", [event("e1")])

        assert await wait_during(reader, "sesn_1", 0, 60, drop_listeners_then_append) is True
    finally:
        await writer.close()
        await reader.close()


async def test_pg_appends_through_two_processes_stay_gap_free(pg_dsn: str) -> None:
    stores = [await PostgresStore.connect(pg_dsn), await PostgresStore.connect(pg_dsn)]
    try:
        seqs: list[int] = []

        async def append(n: int) -> None:
            events = [event(f"e{n}_{i}") for i in range(n % 2 + 1)]
            seqs.extend(e.seq for e in await stores[n % 2].append_events("sesn_1", events))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(append, n)
        assert sorted(seqs) == list(range(1, 31))
        assert await stores[1].last_seq("sesn_1") == 30
        assert verify("sesn_1", await stores[0].read_chain("sesn_1")).ok
    finally:
        for store in stores:
            await store.close()


async def test_pg_concurrent_startup_migrates_once(pg_dsn: str) -> None:
    stores: list[PostgresStore] = []

    async def start() -> None:
        stores.append(await PostgresStore.connect(pg_dsn))

    try:
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for _ in range(3):
                    tg.start_soon(start)
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]
            assert await migrate(conn) == []
        finally:
            await conn.close()
    finally:
        for store in stores:
            await store.close()


async def test_pg_harness_scan_skips_locked_sessions(pg_dsn: str) -> None:
    store = await PostgresStore.connect(pg_dsn)
    conn = await asyncpg.connect(pg_dsn)
    try:
        for name in ("s1", "s2"):
            await store.insert("session", resource(name, status="running"))
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM resources WHERE id = 's1' FOR UPDATE")
            with anyio.fail_after(BOUND):
                assert await store.sessions_needing_harness(10) == ["s2"]
        assert await store.sessions_needing_harness(10) == ["s1", "s2"]
    finally:
        await conn.close()
        await store.close()
