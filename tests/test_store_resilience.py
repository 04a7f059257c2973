"""The store under faults: durable wake-ups, outages told apart from bugs, readers that never
wait for a writer, and the patient store that waits out an outage without writing twice."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from gateway.store.base import EventQuery, Store, StoreUnavailable
from gateway.store.patient import patient
from gateway.store.sqlite import SQLiteStore
from tests.test_store_conformance import event, resource, store  # noqa: F401  (fixture)

pytestmark = pytest.mark.anyio


async def test_client_input_is_a_durable_wake_up_until_a_run_answers_it(store: Store) -> None:  # noqa: F811
    await store.insert("session", resource("s1", status="idle"))
    await store.insert("session", resource("s2", status="idle"))
    await store.append_events("s2", [event("e0", "agent.message")])
    assert await store.sessions_needing_harness(10) == []

    # Accepted just before a crash: nothing woke a harness, yet pickup finds it.
    await store.append_events("s1", [event("e1")])
    assert await store.sessions_needing_harness(10) == ["s1"]

    lease = await store.acquire_lease("s1", "gw-a", 60)
    assert lease is not None
    assert await store.sessions_needing_harness(10) == [], "a live lease means someone is on it"
    await store.mark_answered(lease, 1)
    await store.release_lease(lease)
    assert await store.sessions_needing_harness(10) == []

    # Input after what the run saw is still owed an answer.
    await store.append_events("s1", [event("e2", "agent.message"), event("e3", "user.tool_confirmation")])
    assert await store.sessions_needing_harness(10) == ["s1"]


async def test_only_the_lease_holder_can_mark_input_answered(store: Store) -> None:  # noqa: F811
    await store.insert("session", resource("s1", status="idle"))
    await store.append_events("s1", [event("e1")])
    stale = await store.acquire_lease("s1", "gw-a", -10.0)
    assert stale is not None
    taken = await store.acquire_lease("s1", "gw-b", -10.0)
    assert taken is not None and taken.generation == stale.generation + 1
    await store.mark_answered(stale, 1)
    assert await store.sessions_needing_harness(10) == ["s1"]
    await store.mark_answered(taken, 1)
    assert await store.sessions_needing_harness(10) == []


async def test_deleting_a_session_drops_its_wake_up(store: Store) -> None:  # noqa: F811
    await store.insert("session", resource("s1", status="idle"))
    await store.append_events("s1", [event("e1")])
    assert await store.delete("session", "s1")
    await store.insert("session", resource("s1", status="idle"))
    assert await store.sessions_needing_harness(10) == []


async def test_check_passes_on_a_healthy_store(store: Store) -> None:  # noqa: F811
    await store.check()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
def held_write_lock(sqlite_path: Path) -> Iterator[threading.Event]:
    """Another process's connection holding the database's write lock until released."""
    SQLiteStore(sqlite_path)  # creates the schema
    release = threading.Event()
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(sqlite_path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        release.wait(30)
        conn.execute("COMMIT")
        conn.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(5)
    yield release
    release.set()
    holder.join()


async def test_sqlite_reads_do_not_wait_for_a_locked_writer(
    sqlite_path: Path, held_write_lock: threading.Event
) -> None:
    sqlite = SQLiteStore(sqlite_path, busy_timeout=0.3)
    try:
        async with anyio.create_task_group() as tasks:
            written: list[BaseException] = []

            async def write() -> None:
                try:
                    await sqlite.insert("session", resource("s1", status="idle"))
                except StoreUnavailable as exc:
                    written.append(exc)

            tasks.start_soon(write)
            # While that write waits out the busy timeout, reads answer at once.
            with anyio.fail_after(0.25):
                for _ in range(20):
                    assert await sqlite.get("session", "nope") is None
                    assert await sqlite.last_seq("s1") == 0
        assert written and "locked" in str(written[0]), "a write past the busy timeout is an outage"
        with pytest.raises(StoreUnavailable):
            await sqlite.check()
        held_write_lock.set()
        await sqlite.check()
        await sqlite.insert("session", resource("s1", status="idle"))
    finally:
        await sqlite.close()


async def test_a_real_error_is_not_an_outage(sqlite_path: Path) -> None:
    sqlite = SQLiteStore(sqlite_path, busy_timeout=0.3)
    try:
        await sqlite.insert("session", resource("s1"))
        with pytest.raises(sqlite3.IntegrityError):
            await sqlite.insert("session", resource("s1"))
    finally:
        await sqlite.close()


async def test_the_patient_store_waits_out_a_lock_and_writes_once(
    sqlite_path: Path, held_write_lock: threading.Event
) -> None:
    raw = SQLiteStore(sqlite_path, busy_timeout=0.3)
    try:
        waiting = patient(raw)
        result: list[int] = []

        async def append() -> None:
            stored = await waiting.append_events("s1", [event("e1"), event("e2", "agent.message")])
            result.extend(e.seq for e in stored)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(append)
            # The append keeps failing with the lock held (a busy timeout each time) ...
            with pytest.raises(StoreUnavailable):
                await raw.append_events("s1", [event("probe")])
            assert result == []
            held_write_lock.set()  # ... and goes through once the lock is gone.
        assert result == [1, 2]
        stored = await raw.read_events("s1", EventQuery())
        assert [e.id for e in stored] == ["e1", "e2"]
    finally:
        await raw.close()


class _CommitThenFail:
    """A store whose first append commits but reports an outage, like a cut during COMMIT."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.appends = 0

    async def append_events(self, session_id, events, fence=None):  # type: ignore[no-untyped-def]
        self.appends += 1
        stored = await self.inner.append_events(session_id, events, fence=fence)
        if self.appends == 1:
            raise StoreUnavailable("the answer to COMMIT was lost")
        return stored

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_a_lost_commit_answer_is_not_written_twice(store: Store) -> None:  # noqa: F811
    flaky = _CommitThenFail(store)
    stored = await patient(flaky).append_events("s1", [event("e1"), event("e2", "agent.message")])  # type: ignore[arg-type]
    assert [(e.seq, e.id) for e in stored] == [(1, "e1"), (2, "e2")]
    assert flaky.appends == 1, "the retry found the committed batch instead of appending again"
    assert [e.id for e in await store.read_events("s1", EventQuery())] == ["e1", "e2"]
