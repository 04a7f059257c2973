"""Group commit's edges: bad bodies, held locks, cancelled callers, deletes and retries.

Each test pins a behaviour an adversarial review of group commit found broken at first: the
store must keep every caller's outcome its own, whatever another append in its batch does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from gateway.store import open_store
from gateway.store.base import EventQuery, Store
from gateway.store.chain import verify
from gateway.store.group_commit import GroupCommit, Pending
from tests.support.postgres import empty_store, fresh_database

pytestmark = pytest.mark.anyio

BOUND = 20.0


def event(event_id: str, type_: str = "user.message", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "type": type_, "processed_at": "2024-05-01T00:00:00.000000Z", **extra}


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with empty_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("\udc80", id="lone-surrogate"),
        pytest.param("\ud83d\ude00", id="surrogate-pair-code-points"),
        pytest.param(10**5000, id="int-too-long-for-json"),
    ],
)
async def test_one_bad_body_fails_only_its_own_append(store: Store, bad: Any) -> None:
    sessions = [f"sesn_{n}" for n in range(20)]
    outcomes: dict[str, object] = {}

    async def append(session_id: str) -> None:
        body = event(f"{session_id}_e", content=bad if session_id == sessions[7] else "fine")
        try:
            outcomes[session_id] = await store.append_events(session_id, [body])
        except Exception as exc:
            outcomes[session_id] = exc

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for session_id in sessions:
                tg.start_soon(append, session_id)
    failed = {s: repr(o) for s, o in outcomes.items() if isinstance(o, Exception) and s != sessions[7]}
    assert not failed, f"innocent appends failed because one body was bad: {failed}"
    for session_id in sessions[:7] + sessions[8:]:
        assert await store.last_seq(session_id) == 1


async def _hold_head(conn: asyncpg.Connection, session_id: str) -> asyncpg.transaction.Transaction:
    """Lock a session's head as the locking path (``pg_log``) does, in an open transaction."""
    held = conn.transaction()
    await held.start()
    await conn.execute(
        "INSERT INTO event_heads AS h (session_id, last_seq, last_hash) VALUES ($1, 0, '') "
        "ON CONFLICT (session_id) DO UPDATE SET last_seq = h.last_seq",
        session_id,
    )
    return held


async def test_a_held_head_holds_up_only_its_own_session(pg_url: str) -> None:
    """Another process stalls holding session A's head: appends to B still commit at once, A's
    append commits once the lock is gone, and a caller of A can give up meanwhile."""
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await store.append_events("sesn_a", [event("a1")])
        await store.append_events("sesn_b", [event("b1")])
        held = await _hold_head(other, "sesn_a")
        with anyio.fail_after(BOUND):
            with anyio.move_on_after(0.5) as gave_up:
                await store.append_events("sesn_a", [event("a-abandoned")])
            assert gave_up.cancelled_caught, "a caller's deadline cancels an append waiting on a lock"
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.append_events, "sesn_a", [event("a2")])
                for n in range(2, 6):
                    await store.append_events("sesn_b", [event(f"b{n}")])
                assert await store.last_seq("sesn_b") == 5
                assert await store.last_seq("sesn_a") == 1, "A waits for its head"
                await held.rollback()
        log = await store.read_events("sesn_a", EventQuery())
        assert [e.id for e in log] == ["a1", "a2"]
        assert verify("sesn_a", await store.read_chain("sesn_a")).ok
    finally:
        await other.close()
        await store.close()


async def test_a_cancelled_appender_whose_append_commits_still_wakes_readers(tmp_path: Path) -> None:
    async with empty_store("sqlite", tmp_path) as store:
        woke: list[bool] = []
        writer_lock = store._db._write_lock  # type: ignore[attr-defined]

        async def reader() -> None:
            woke.append(await store.wait_for_append("sesn_1", 0, timeout=BOUND))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                writer_lock.acquire()  # the writer thread is busy: the batch waits for it
                try:
                    with anyio.CancelScope() as scope:
                        async with anyio.create_task_group() as appenders:
                            appenders.start_soon(store.append_events, "sesn_1", [event("e1")])
                            await anyio.wait_all_tasks_blocked()  # its batch is on the writer now
                            scope.cancel()
                            writer_lock.release()
                finally:
                    if writer_lock.locked():
                        writer_lock.release()
        assert await store.last_seq("sesn_1") == 1, "the append was committed"
        assert woke == [True]


async def test_an_append_racing_the_sessions_delete_starts_a_fresh_log(pg_url: str) -> None:
    """The session is deleted while its head is cached here: the append must not continue the
    deleted chain at the cached seq, but start the log afresh at 1."""
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await store.append_events("sesn_1", [event("e1"), event("e2"), event("e3")])
        deleting = other.transaction()
        await deleting.start()
        for sql in (  # PostgresStore.delete's statements, from another process
            "DELETE FROM resources WHERE kind = 'session' AND id = 'sesn_1'",
            "DELETE FROM leases WHERE session_id = 'sesn_1'",
            "DELETE FROM event_heads WHERE session_id = 'sesn_1'",
            "DELETE FROM wakeups WHERE session_id = 'sesn_1'",
            "DELETE FROM events WHERE session_id = 'sesn_1'",
        ):
            await other.execute(sql)
        stored: list[Any] = []

        async def append() -> None:
            stored.extend(await store.append_events("sesn_1", [event("e4")]))

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(append)
                await anyio.wait_all_tasks_blocked()
                await deleting.commit()
        log = await store.read_events("sesn_1", EventQuery())
        assert [e.seq for e in stored] == [1] and [e.id for e in log] == ["e4"]
        assert verify("sesn_1", await store.read_chain("sesn_1")).ok
    finally:
        await other.close()
        await store.close()


async def test_a_commit_failing_after_a_retry_still_commits_the_retried_append() -> None:
    """A batch's commit that puts an append back, then fails (a connection released badly),
    must not tell that append's caller it failed: the next batch commits it."""
    committed: list[str] = []
    woken: list[str] = []
    calls = 0

    async def commit(batch: list[Pending], group: GroupCommit) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            for pending in batch:
                group.retry(pending)
            raise OSError("connection reset while releasing")
        for pending in batch:
            committed.append(pending.work)
            group.succeed(pending, pending.work)

    group = GroupCommit(commit, woken.append)
    with anyio.fail_after(BOUND):
        assert await group.submit("sesn_1", "append-1") == "append-1"
    assert committed == ["append-1"] and woken == ["sesn_1"] and group.commits == 2


TRICKY: dict[str, Any] = {
    "accents": "é à ñ ü Å",
    "cjk": "中文字符 日本語 한국어",
    "emoji": "😀👩\u200d👩\u200d👧 🏳️\u200d🌈",
    "separators": "\u2028\u2029\u0085",
    "bom": "\ufeff",
    "controls": "\x01\x08\t\n\r\x1f\x7f",
    "escapes": 'back\\slash "quote" /slash \\u0041',
    "edges": "\ud7ff\ue000\ufffd\uffff\U0010ffff",
    "combining": "a\u0301 e\u0308",
    "": "empty key",
    "key\nwith\tcontrol \u00e9": "x",
    "ints": [0, -1, 2**63, -(2**63) - 1, 10**30, -(10**30), 10**4299],
    "bools": [True, False, None],
    "nested": {"a": [{"b": [[], {}, [{"c": None}]]}]},
    "deep": {"d": {"d": {"d": {"d": {"d": {"d": {"d": {"d": {"d": {"d": [1, "x"]}}}}}}}}}},
    "big": "x" * 200_000,
}


async def test_string_and_int_bodies_hash_identically_after_jsonb(store: Store) -> None:
    """Bodies sent as they are (no database round trip to normalise them) verify: well-formed
    strings of every kind, ints, bools, nulls and nesting come back from jsonb unchanged."""
    sessions = [f"sesn_{n}" for n in range(8)]

    async def append(n: int, session_id: str) -> None:
        await store.append_events(session_id, [event(f"{session_id}_{k}", **TRICKY) for k in range(3)])

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for n, session_id in enumerate(sessions):
                tg.start_soon(append, n, session_id)
    for session_id in sessions:
        chain = await store.read_chain(session_id)
        assert verify(session_id, chain).ok
        for link in chain:
            assert {k: link.body[k] for k in TRICKY} == TRICKY


async def test_two_stores_appending_to_the_same_sessions(pg_url: str) -> None:
    """Two processes' head caches race on the same sessions: gap-free, chained, time-ordered."""
    stores = [await open_store(pg_url), await open_store(pg_url)]
    try:

        async def writer(store: Store, w: int) -> None:
            for k in range(15):
                session_id = f"sesn_{k % 3}"
                await store.append_events(session_id, [event(f"w{w}_{k}_a"), event(f"w{w}_{k}_b")])

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for w in range(8):
                    tg.start_soon(writer, stores[w % 2], w)
        for n in range(3):
            session_id = f"sesn_{n}"
            log = await stores[0].read_events(session_id, EventQuery())
            assert [e.seq for e in log] == list(range(1, len(log) + 1))
            times = [e.body["processed_at"] for e in log]
            assert times == sorted(times) and len(set(times)) == len(times)
            assert verify(session_id, await stores[0].read_chain(session_id)).ok
            for a, b in zip(log[::2], log[1::2], strict=True):  # each append stayed contiguous
                assert a.id[:-2] == b.id[:-2] and a.id.endswith("_a")
    finally:
        for store in stores:
            await store.close()
