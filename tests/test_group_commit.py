"""Group commit on both store backends: many sessions' appends share a commit, and each
caller still gets only its own outcome, durably.

The crash test kills a process appending from many sessions at once with SIGKILL while
batches are in flight, then reopens the store: every append that was acknowledged is
there, every session's log is gap-free and its chain verifies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from gateway.store import open_store
from gateway.store.base import EventQuery, LeaseLost, Store
from gateway.store.chain import verify
from tests.support.postgres import empty_store, fresh_database

pytestmark = pytest.mark.anyio

BOUND = 20.0
SESSIONS = 40


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with empty_store(request.param, tmp_path) as opened:
        yield opened


def event(event_id: str, type_: str = "user.message") -> dict[str, object]:
    return {"id": event_id, "type": type_, "processed_at": "2024-05-01T00:00:00.000000Z"}


async def test_concurrent_appends_share_commits_and_keep_their_own_outcomes(store: Store) -> None:
    """Forty sessions append at once: one with a stale fence and one with a duplicate id
    fail alone; the others commit in far fewer commits than appends."""
    sessions = [f"sesn_{n}" for n in range(SESSIONS)]
    for session_id in sessions:
        await store.append_events(session_id, [event(f"{session_id}_first")])
    fence = await store.acquire_lease(sessions[0], "gw-old", ttl=-10.0)
    assert fence is not None
    assert await store.acquire_lease(sessions[0], "gw-new", ttl=60.0) is not None  # takes it over
    commits_before = store.append_commits  # type: ignore[attr-defined]
    outcomes: dict[str, object] = {}

    async def append(session_id: str) -> None:
        duplicate = session_id == sessions[1]
        events = [
            event(f"{session_id}_second"),
            event(f"{sessions[2]}_first" if duplicate else f"{session_id}_x"),
        ]
        try:
            outcomes[session_id] = await store.append_events(
                session_id, events, fence if session_id == sessions[0] else None
            )
        except Exception as exc:
            outcomes[session_id] = exc

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            for session_id in sessions:
                tg.start_soon(append, session_id)

    assert isinstance(outcomes[sessions[0]], LeaseLost)
    assert type(outcomes[sessions[1]]).__name__ in {"IntegrityError", "UniqueViolationError"}
    for session_id in sessions:
        log = await store.read_events(session_id, EventQuery())
        failed = session_id in sessions[:2]
        assert [e.seq for e in log] == ([1] if failed else [1, 2, 3])
        assert verify(session_id, await store.read_chain(session_id)).ok
        if not failed:
            stored = outcomes[session_id]
            assert isinstance(stored, list) and [e.seq for e in stored] == [2, 3]
            assert [e.id for e in stored] == [e.id for e in log[1:]]
    commits = store.append_commits - commits_before  # type: ignore[attr-defined]
    assert commits <= SESSIONS // 4, f"{commits} commits for {SESSIONS} concurrent appends"


async def test_a_lone_append_is_committed_at_once(store: Store) -> None:
    """No timer: one append on an idle store takes one commit, and the next sees it."""
    before = store.append_commits  # type: ignore[attr-defined]
    [stored] = await store.append_events("sesn_1", [event("e1")])
    assert store.append_commits == before + 1  # type: ignore[attr-defined]
    assert await store.event_seq("sesn_1", "e1") == stored.seq == 1


async def test_a_cancelled_appender_still_learns_nothing_is_lost(store: Store) -> None:
    """An appender cancelled while its batch is on disk: the events either are in the log or
    are not, never half; later appends continue gap-free."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(store.append_events, "sesn_1", [event(f"a{n}"), event(f"b{n}")])
            await anyio.lowlevel.checkpoint()
            scope.cancel()
    log = await store.read_events("sesn_1", EventQuery())
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    assert len(log) % 2 == 0 and all(
        a.id[1:] == b.id[1:] and a.id[0] == "a" for a, b in zip(log[::2], log[1::2], strict=True)
    )
    [after] = await store.append_events("sesn_1", [event("last")])
    assert after.seq == len(log) + 1
    assert verify("sesn_1", await store.read_chain("sesn_1")).ok


APPENDER = """
import asyncio, sys
from gateway.store import open_store

async def main(url, sessions):
    store = await open_store(url)
    async def writer(n):
        session_id = f"sesn_{n}"
        seq = 0
        while True:
            seq += 1
            body = {"id": f"evt_{n}_{seq}", "type": "agent.thinking", "processed_at": "2024-05-01T00:00:00Z"}
            [stored] = await store.append_events(session_id, [body])
            print(session_id, stored.seq, stored.id, flush=True)
    await asyncio.gather(*(writer(n) for n in range(sessions)))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _kill_mid_batch(url: str) -> dict[str, list[tuple[int, str]]]:
    """Acknowledged appends per session, from an appender killed with SIGKILL mid-stream."""
    process = subprocess.Popen(
        [sys.executable, "-c", APPENDER, url, str(SESSIONS)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    hung = threading.Timer(60, process.kill)  # a hang fails the count below, never the run
    hung.start()
    acked: dict[str, list[tuple[int, str]]] = {}
    try:
        assert process.stdout is not None
        for count, line in enumerate(iter(process.stdout.readline, "")):
            session_id, seq, event_id = line.split()
            acked.setdefault(session_id, []).append((int(seq), event_id))
            if count == 1500:
                os.kill(process.pid, signal.SIGKILL)  # batches are in flight: 40 writers never wait
                break
    finally:
        hung.cancel()
        process.kill()
        process.wait()
    return acked


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_kill_9_during_group_commit_loses_no_acknowledged_append(backend: str, tmp_path: Path) -> None:
    if backend == "sqlite":
        url = f"sqlite://{tmp_path}/store.db"
        acked = await anyio.to_thread.run_sync(_kill_mid_batch, url)
        await _check_after_crash(url, acked)
        return
    async with fresh_database() as url:
        acked = await anyio.to_thread.run_sync(_kill_mid_batch, url)
        await _check_after_crash(url, acked)


async def _check_after_crash(url: str, acked: dict[str, list[tuple[int, str]]]) -> None:
    assert sum(map(len, acked.values())) > 1000
    store = await open_store(url)
    try:
        for n in range(SESSIONS):
            session_id = f"sesn_{n}"
            log = await store.read_events(session_id, EventQuery())
            assert [e.seq for e in log] == list(range(1, len(log) + 1)), "gap-free"
            assert [e.id for e in log] == [f"evt_{n}_{seq}" for seq in range(1, len(log) + 1)]
            assert set(acked.get(session_id, [])) <= {(e.seq, e.id) for e in log}, "acknowledged is durable"
            assert verify(session_id, await store.read_chain(session_id)).ok
            [after] = await store.append_events(session_id, [event(f"{session_id}_after")])
            assert after.seq == len(log) + 1
    finally:
        await store.close()
