"""Group commit under races: callers cancelled at every step, heads held or being created by
another writer, contention from two stores, a store closing under retries and aside work.

Each pins a behaviour a second adversarial review of group commit checked or found broken.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest

import gateway.store.pg_batch as pg_batch
import gateway.store.postgres as postgres_module
from gateway.store import open_store
from gateway.store.base import EventQuery, LeaseLost
from gateway.store.chain import verify
from gateway.store.group_commit import GroupCommit, Pending
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.anyio

BOUND = 20.0


def event(event_id: str, type_: str = "user.message", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "type": type_, "processed_at": "2024-05-01T00:00:00.000000Z", **extra}


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


async def _hold_head(conn: asyncpg.Connection, session_id: str, last_hash: str = "") -> Any:
    """Lock (or create, uncommitted) a session's head as the locking path does."""
    held = conn.transaction()
    await held.start()
    await conn.execute(
        "INSERT INTO event_heads AS h (session_id, last_seq, last_hash) VALUES ($1, 0, $2) "
        "ON CONFLICT (session_id) DO UPDATE SET last_seq = h.last_seq",
        session_id,
        last_hash,
    )
    return held


async def _settle(task: asyncio.Future[Any], timeout: float) -> bool:
    """Whether ``task`` ends within ``timeout``; if not, it is cancelled natively (through
    any anyio shield) so the test never hangs."""
    done, _ = await asyncio.wait([task], timeout=timeout)
    if task in done:
        return True
    task.cancel()
    await asyncio.wait([task], timeout=BOUND)
    return False


# --- Callers cancelled as their append goes aside ------------------------------------------


async def test_group_aside_cancelled_before_it_starts_still_answers_the_caller() -> None:
    """The caller's cancellation lands before the aside task's first step (both in one loop
    iteration): the task never runs, yet its caller is answered (cancelled), never left waiting."""

    async def locking(pending: Pending, group: GroupCommit) -> None:
        group.succeed(pending, "committed")

    async def commit(batch: list[Pending], group: GroupCommit) -> None:
        for pending in batch:
            group.aside(pending, locking(pending, group))

    group = GroupCommit(commit, lambda _session: None)
    caller = asyncio.ensure_future(group.submit("sesn_1", "work"))
    await asyncio.sleep(0)  # the caller queues its append and starts the drain
    caller.cancel()  # its wake-up is queued after the drain's step, before the aside's first step
    assert await _settle(caller, 2.0), "the cancelled caller hangs: its aside task never answered it"


async def test_an_empty_append_cancelled_as_it_goes_aside_does_not_hang(pg_url: str) -> None:
    """The same on the PostgreSQL store: an append with no events (a fence check) always goes
    aside; a caller cancelled right after submitting it is answered."""
    store = await open_store(pg_url)
    try:
        caller = asyncio.ensure_future(store.append_events("sesn_1", []))
        await asyncio.sleep(0)
        caller.cancel()
        assert await _settle(caller, 5.0), "the cancelled caller hangs in submit's shielded wait"
    finally:
        await store.close()


# --- A caller cancelled while its append is in a batch --------------------------------------


async def test_a_caller_cancelled_during_its_first_attempt_can_give_up_while_the_head_is_held(
    pg_url: str,
) -> None:
    """Another writer holds A's head. A caller cancelled while its append is in its first batch
    statement, which skips A (SKIP LOCKED) and so writes nothing, gives up at once: the append
    is dropped, not retried or finished aside waiting for the lock."""
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    held = None
    try:
        await store.append_events("sesn_a", [event("a1")])
        held = await _hold_head(other, "sesn_a")
        group: GroupCommit = store._appends  # type: ignore[attr-defined]
        original = group._commit
        in_batch = asyncio.Event()

        async def commit(batch: list[Pending], g: GroupCommit) -> None:
            if any(p.session_id == "sesn_a" for p in batch):
                in_batch.set()
            await original(batch, g)

        group._commit = commit  # type: ignore[method-assign]
        caller = asyncio.ensure_future(store.append_events("sesn_a", [event("a-abandoned")]))
        await asyncio.wait_for(in_batch.wait(), BOUND)  # the batch statement is on the wire
        caller.cancel()
        done, _ = await asyncio.wait([caller], timeout=3.0)
        gave_up = caller in done
        await held.rollback()
        held = None
        await _settle(caller, BOUND)
        assert gave_up, "a caller cancelled during its append's first attempt waits for the held lock"
        log = await store.read_events("sesn_a", EventQuery())
        assert verify("sesn_a", await store.read_chain("sesn_a")).ok and log[0].id == "a1"
    finally:
        if held is not None:
            await held.rollback()
        await other.close()
        await store.close()


# --- A head another writer is creating -----------------------------------------------------


async def test_a_new_head_another_writer_is_creating_holds_up_only_its_own_session(pg_url: str) -> None:
    """Another writer (the locking path, e.g. in another process) is creating a new session's
    head and stalls before committing: the batch skips that session (the advisory lock both
    take) instead of waiting on the insert, so appends to other sessions go on at once."""
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    held = None
    try:
        await store.append_events("sesn_b", [event("b1")])  # B's head is known: no read needed
        from gateway.store.pg_log import append_to_log

        await other.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        held = other.transaction()
        await held.start()  # the locking path creating the head, stalled before its commit
        await append_to_log(other, "sesn_new", [event("n0")], None)
        first = asyncio.ensure_future(store.append_events("sesn_new", [event("n1")]))
        await anyio.wait_all_tasks_blocked()
        started = anyio.current_time()
        await store.append_events("sesn_b", [event("b2")])
        elapsed = anyio.current_time() - started
        await held.rollback()
        held = None
        assert await _settle(first, BOUND)
        assert [e.seq for e in first.result()] == [1]  # the stalled creation rolled back
        assert elapsed < 1.0, f"an append to another session waited {elapsed:.1f}s for sesn_new's head"
    finally:
        if held is not None:
            await held.rollback()
        await other.close()
        await store.close()


# --- A head read past lock_timeout ---------------------------------------------------------


async def test_a_head_read_past_lock_timeout_does_not_fail_the_append(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The appender connection's ``lock_timeout`` also bounds the head read of an append whose
    head is not known here: a read that times out sends the append to the locking path, which
    waits for the lock and commits, as an append with a known head does."""
    monkeypatch.setattr(postgres_module, "LOCK_TIMEOUT", "200ms")
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    locking = None
    try:
        await store.append_events("sesn_known", [event("k1")])
        locking = other.transaction()
        await locking.start()
        await other.execute("LOCK TABLE event_heads IN ACCESS EXCLUSIVE MODE")  # a migration, say
        known = asyncio.ensure_future(store.append_events("sesn_known", [event("k2")]))
        fresh = asyncio.ensure_future(store.append_events("sesn_fresh", [event("f1")]))
        await asyncio.wait([fresh], timeout=2.0)  # with the lock held well past lock_timeout
        await locking.rollback()
        locking = None
        assert await _settle(known, BOUND) and await _settle(fresh, BOUND)
        assert [e.seq for e in known.result()] == [2], "the known head's append waited and committed"
        assert not fresh.exception(), f"the unknown head's append failed: {fresh.exception()!r}"
    finally:
        if locking is not None:
            await locking.rollback()
        await other.close()
        await store.close()


# --- Surrogates in keys --------------------------------------------------------------------


async def test_a_key_with_surrogate_pair_code_points_is_normalised_like_a_value(pg_url: str) -> None:
    """A key with surrogate code points is normalised by the database before hashing, exactly
    like a value with them (as the locking path always did)."""
    store = await open_store(pg_url)
    try:
        [as_value] = await store.append_events("sesn_1", [event("v", content="\ud83d\ude00")])
        assert as_value.body["content"] == "\U0001f600"
        [as_key] = await store.append_events("sesn_1", [event("k", **{"\ud83d\ude00": "x"})])
        assert as_key.body["\U0001f600"] == "x"
        assert verify("sesn_1", await store.read_chain("sesn_1")).ok
    finally:
        await store.close()


# --- Contention, closing, bad bodies, fencing ----------------------------------------------


async def test_heavy_contention_from_two_stores_on_one_session(pg_url: str) -> None:
    """Two processes' writers all on one session: many appends exhaust MAX_ATTEMPTS and finish
    on the locking path beside the batches; the log stays gap-free, chained, time-ordered, each
    append contiguous and present exactly once, and every caller is answered."""
    stores = [await open_store(pg_url), await open_store(pg_url)]
    try:
        acked: list[str] = []

        async def writer(w: int) -> None:
            store = stores[w % 2]
            for k in range(12):
                stored = await store.append_events("sesn_hot", [event(f"w{w}_{k}_a"), event(f"w{w}_{k}_b")])
                assert [e.id for e in stored] == [f"w{w}_{k}_a", f"w{w}_{k}_b"]
                assert stored[1].seq == stored[0].seq + 1
                acked.append(f"w{w}_{k}")

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                for w in range(16):
                    tg.start_soon(writer, w)
        log = await stores[0].read_events("sesn_hot", EventQuery())
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        assert len(log) == 2 * len(acked) == 2 * 16 * 12
        times = [e.body["processed_at"] for e in log]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert verify("sesn_hot", await stores[0].read_chain("sesn_hot")).ok
        for a, b in zip(log[::2], log[1::2], strict=True):
            assert a.id[:-2] == b.id[:-2] and a.id.endswith("_a")
    finally:
        for store in stores:
            await store.close()


async def test_a_retry_scheduled_when_the_store_closes_is_answered(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry waiting on its timer when the store closes: the timer fires, the drain finds the
    appender pool closed and fails the append (no hang)."""
    monkeypatch.setattr(pg_batch, "RETRY_DELAY", 0.5)
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await store.append_events("sesn_a", [event("a1")])
        held = await _hold_head(other, "sesn_a")
        group: GroupCommit = store._appends  # type: ignore[attr-defined]
        original_retry = group.retry
        waiting = asyncio.Event()

        def retry(pending: Pending, delay: float = 0.0) -> None:
            original_retry(pending, delay)
            if delay > 0:
                waiting.set()

        group.retry = retry  # type: ignore[method-assign]
        caller = asyncio.ensure_future(store.append_events("sesn_a", [event("a2")]))
        await asyncio.wait_for(waiting.wait(), BOUND)
        await asyncio.wait_for(store.close(), BOUND)
        assert await _settle(caller, 5.0), "a retry scheduled across close hangs"
        assert caller.exception() is not None
        await held.rollback()
    finally:
        await other.close()


async def test_close_waits_for_an_aside_append_which_keeps_its_own_outcome(pg_url: str) -> None:
    """An append finishing aside (waiting for a head another writer holds) when the store
    closes: close waits for it (asyncpg's graceful pool close), and once the lock is gone the
    append commits and its caller is told so."""
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await store.append_events("sesn_a", [event("a1")])
        held = await _hold_head(other, "sesn_a")
        group: GroupCommit = store._appends  # type: ignore[attr-defined]
        original_aside = group.aside
        aside = asyncio.Event()

        def note_aside(pending: Pending, work: Any) -> None:
            original_aside(pending, work)
            aside.set()

        group.aside = note_aside  # type: ignore[method-assign]
        caller = asyncio.ensure_future(store.append_events("sesn_a", [event("a2")]))
        await asyncio.wait_for(aside.wait(), BOUND)  # after MAX_ATTEMPTS retries (about 30 ms)
        closing = asyncio.ensure_future(store.close())
        done, _ = await asyncio.wait([closing], timeout=0.5)
        assert not done, "close returned while an append was still running aside"
        await held.rollback()
        assert await _settle(closing, BOUND)
        assert await _settle(caller, BOUND)
        assert [e.seq for e in caller.result()] == [2]
    finally:
        await other.close()


async def test_a_nul_in_one_body_fails_only_its_own_append(pg_url: str) -> None:
    """``\\x00`` passes ``_survives_jsonb`` but jsonb refuses it: the batch statement fails as a
    whole and every append of the batch takes the locking path, where only the bad one fails."""
    store = await open_store(pg_url)
    try:
        outcomes: dict[str, object] = {}

        async def append(session_id: str, content: str) -> None:
            try:
                outcomes[session_id] = await store.append_events(
                    session_id, [event(session_id, content=content)]
                )
            except Exception as exc:
                outcomes[session_id] = exc

        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as tg:
                for n in range(10):
                    tg.start_soon(append, f"sesn_{n}", "bad\x00" if n == 3 else "fine")
        assert isinstance(outcomes["sesn_3"], Exception)
        assert all(isinstance(o, list) for s, o in outcomes.items() if s != "sesn_3")
    finally:
        await store.close()


async def test_a_fenced_append_retrying_on_a_held_head_sees_the_takeover(pg_url: str) -> None:
    """A fenced append retrying while another writer holds its head, its lease taken over
    meanwhile: either it fails with LeaseLost and writes nothing, or (on the locking path,
    holding the lease FOR SHARE) it commits and the takeover waits for it."""
    store = await open_store(pg_url)
    other = await asyncpg.connect(pg_url)
    try:
        await store.append_events("sesn_a", [event("a1")])
        fence = await store.acquire_lease("sesn_a", "gw-old", ttl=-10.0)
        assert fence is not None
        held = await _hold_head(other, "sesn_a")
        caller = asyncio.ensure_future(store.append_events("sesn_a", [event("a2")], fence))
        await anyio.wait_all_tasks_blocked()
        taking = asyncio.ensure_future(store.acquire_lease("sesn_a", "gw-new", ttl=60.0))
        await asyncio.wait([taking], timeout=0.2)
        await held.rollback()
        assert await _settle(caller, BOUND) and await _settle(taking, BOUND)
        assert taking.result() is not None
        ids = [e.id for e in await store.read_events("sesn_a", EventQuery())]
        if caller.exception() is None:  # it held the lease FOR SHARE (locking path): takeover waited
            assert ids == ["a1", "a2"]
        else:
            assert isinstance(caller.exception(), LeaseLost) and ids == ["a1"]
    finally:
        await other.close()
        await store.close()
