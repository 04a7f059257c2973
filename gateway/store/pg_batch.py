"""PostgreSQL's side of group commit: a batch of appends, one per session, in one statement.

The locking path (``pg_log.append_to_log``) takes five to eight round trips per append:
begin, lock the head, insert, move the head, wake-up, status, notify, commit. Here a batch
of appends from different sessions is one statement in autocommit, so one round trip and one
WAL flush serve them all:

- each append names the head it builds on (its last seq and hash). The statement moves a
  session's head only if it still is that head (an ``UPDATE ... WHERE last_hash = expected``,
  rechecked against the latest row; a new session's head is an ``INSERT ... ON CONFLICT DO
  NOTHING``), and writes that session's events, wake-up, status and notification only if the
  head moved. A head another transaction holds (``SKIP LOCKED``) or is creating (an advisory
  lock the locking path takes too) is skipped, never waited for.
  An append whose head moved or was held is retried a moment later on the new head; after
  ``MAX_ATTEMPTS`` it takes the locking path in a task of its own, so one stalled session
  never holds up the others, and its caller can still give up.
- a fenced append reads its lease ``FOR SHARE`` in the same statement, so a takeover waits
  for it to commit, exactly as on the locking path.
- heads are remembered per process after every append, so a session's writer (its harness)
  needs no read before writing; an unknown head costs one read. A head remembered for a
  session deleted meanwhile matches no row, so the append is retried on a fresh log.
- the chain's hashes cover the bodies as jsonb returns them. A body of well-formed strings,
  integers, booleans and nulls comes back equal to what was sent; any other body (a float,
  which jsonb may print differently; surrogate code points) is first normalised by the
  database, one more round trip.

A body that cannot be stored fails its own append. Any other error the server reports rolls
the whole statement back; its appends then take the locking path one by one, so each caller
gets its own outcome. A lost connection fails the batch: whether it committed is unknown, as
for a single append.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.store.base import (
    WAKES_HARNESS,
    Body,
    Lease,
    LeaseLost,
    StoredEvent,
    attention_after,
    status_after,
)
from gateway.store.chain import GENESIS, link_hash
from gateway.store.clock import commit_times
from gateway.store.group_commit import GroupCommit, Pending
from gateway.store.pg_errors import unavailable
from gateway.store.pg_listener import CHANNEL
from gateway.store.pg_log import append_to_log

HEADS_REMEMBERED = 10_000
MAX_ATTEMPTS = 8
"""Optimistic attempts before an append that keeps losing its head takes the locking path."""
RETRY_DELAY = 0.001
"""Seconds before a retry, times the attempts so far: a head another writer holds is skipped,
not waited for, so the retry gives that writer time to finish."""
LOCK_TIMEOUT = "5s"
"""The appender connection's ``lock_timeout``: a backstop for the row locks the statement does
wait for (a lease being taken over, the session's row); past it the batch's appends finish aside."""


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    processed_at: str | None


NEW = Head(0, GENESIS, None)


@dataclass(frozen=True)
class Append:
    events: Sequence[Body]
    fence: Lease | None


class Heads:
    """The last known head of recently written sessions (a hint: the statement checks it)."""

    def __init__(self, size: int = HEADS_REMEMBERED) -> None:
        self._size = size
        self._known: OrderedDict[str, Head] = OrderedDict()

    def get(self, session_id: str) -> Head | None:
        return self._known.get(session_id)

    def put(self, session_id: str, head: Head) -> None:
        self._known[session_id] = head
        self._known.move_to_end(session_id)
        while len(self._known) > self._size:
            self._known.popitem(last=False)

    def forget(self, session_id: str) -> None:
        self._known.pop(session_id, None)


def pg_group_commit(
    appender: asyncpg.Pool, pool: asyncpg.Pool, heads: Heads, committed: Callable[[str], None]
) -> GroupCommit:
    """Batches on ``appender`` (one connection); an append that must wait for a lock (another
    writer holds its head) finishes aside, on the locking path over ``pool``."""

    async def commit(batch: list[Pending], group: GroupCommit) -> None:
        async with appender.acquire() as conn:
            await _commit(conn, pool, heads, batch, group)

    return GroupCommit(commit, committed, one_per_session=True)


async def _commit(
    conn: asyncpg.Connection, pool: asyncpg.Pool, heads: Heads, batch: list[Pending], group: GroupCommit
) -> None:
    ready: list[tuple[Pending, list[StoredEvent]]] = []
    for pending in sorted(batch, key=lambda p: p.session_id):
        if pending.attempts >= MAX_ATTEMPTS or not pending.work.events:
            group.aside(pending, _locking(pool, heads, pending, group))
            continue
        try:  # a body that cannot be stored fails its own append, never the batch
            ready.append((pending, await _plan(conn, heads, pending)))
        except Exception as exc:
            if unavailable(exc) is not None:
                raise
            if _bad_body(exc):
                pending.fail(exc)
            else:  # the head could not be read (a lock past lock_timeout): the locking path waits
                group.aside(pending, _locking(pool, heads, pending, group))
    if not ready:
        return
    try:
        rows = await conn.fetch(WRITE, *_arguments(ready))
    except Exception as exc:
        if unavailable(exc) is not None:
            raise  # the connection is gone: whether the batch committed is unknown, as for one append
        for pending, _ in ready:  # the statement rolled back as a whole: each on its own now
            group.aside(pending, _locking(pool, heads, pending, group))
        return
    verdicts = {row["session_id"]: (row["fenced"], row["applied"]) for row in rows}
    for pending, stored in ready:
        fenced, applied = verdicts[pending.session_id]
        if applied:
            last = stored[-1]
            heads.put(pending.session_id, Head(last.seq, last.hash, last.body["processed_at"]))
            group.succeed(pending, stored)
        elif not fenced:
            fence = pending.work.fence
            pending.fail(
                LeaseLost(f"lease on {pending.session_id} generation {fence.generation} was taken over")
            )
        else:  # another writer moved the head, or holds it: build on its head, a little later
            heads.forget(pending.session_id)
            group.retry(pending, delay=RETRY_DELAY * pending.attempts)


async def _locking(pool: asyncpg.Pool, heads: Heads, pending: Pending, group: GroupCommit) -> None:
    """The locking path for one append (``pg_log``), with its own outcome."""
    heads.forget(pending.session_id)
    try:
        async with pool.acquire() as conn, conn.transaction():
            stored = await append_to_log(conn, pending.session_id, pending.work.events, pending.work.fence)
    except Exception as exc:
        pending.fail(exc)
        return
    group.succeed(pending, stored)


async def _read_head(conn: asyncpg.Connection, session_id: str) -> Head:
    row = await conn.fetchrow(
        "SELECT h.last_seq, h.last_hash, e.processed_at FROM event_heads h "
        "LEFT JOIN events e ON e.session_id = h.session_id AND e.seq = h.last_seq "
        "WHERE h.session_id = $1",
        session_id,
    )
    return NEW if row is None else Head(row["last_seq"], row["last_hash"], row["processed_at"])


async def _plan(conn: asyncpg.Connection, heads: Heads, pending: Pending) -> list[StoredEvent]:
    """The events of ``pending`` as they will be stored on top of the session's head."""
    head = heads.get(pending.session_id) or await _read_head(conn, pending.session_id)
    events: Sequence[Body] = pending.work.events
    if all(_survives_jsonb(body) for body in events):
        bodies = [dict(body) for body in events]
    else:
        bodies = await conn.fetchval(
            "SELECT ARRAY(SELECT b FROM unnest($1::jsonb[]) WITH ORDINALITY AS t(b, n) ORDER BY n)",
            list(events),
        )
    stored, prev = [], head.hash
    times = commit_times(head.processed_at, len(bodies))
    for offset, body in enumerate(bodies, start=1):
        body["processed_at"] = times[offset - 1]
        seq = head.seq + offset
        digest = link_hash(pending.session_id, seq, prev, body)
        stored.append(StoredEvent(pending.session_id, seq, body["id"], body["type"], body, prev, digest))
        prev = digest
    return stored


def _bad_body(exc: Exception) -> bool:
    """Whether ``exc`` says the append's bodies cannot be stored (not that the database is busy)."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith("22")  # data exception: the value itself
    return isinstance(exc, ValueError | TypeError | asyncpg.exceptions.DataError)


def _clean(text: str) -> bool:
    try:
        text.encode()  # surrogate code points: jsonb pairs them up or refuses them
    except UnicodeEncodeError:
        return False
    return True


def _survives_jsonb(value: Any) -> bool:
    """Whether jsonb returns ``value`` exactly as sent: no floats, no surrogates, string keys."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, int) or value is None:  # bool is an int
        return True
    if isinstance(value, list):
        return all(_survives_jsonb(item) for item in value)
    if isinstance(value, dict):
        return all(
            isinstance(key, str) and _clean(key) and _survives_jsonb(item) for key, item in value.items()
        )
    return False


WRITE = """
WITH input AS (
    SELECT * FROM unnest(
        $1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[],
        $8::text[], $9::text[], $10::bool[], $11::bool[], $12::text[], $13::bigint[]
    ) AS t(session_id, expected_seq, expected_hash, new_seq, new_hash, owner, generation,
           status, updated_at, attention_set, attention_keep, attention, wake_seq)
),
fenced AS (
    SELECT l.session_id FROM leases l
    JOIN input i ON i.session_id = l.session_id AND i.owner = l.owner AND i.generation = l.generation
    FOR SHARE OF l
),
held AS (
    SELECT h.session_id FROM event_heads h JOIN input i ON i.session_id = h.session_id
    WHERE i.expected_seq > 0 AND (i.owner IS NULL OR i.session_id IN (SELECT session_id FROM fenced))
    ORDER BY h.session_id
    FOR UPDATE OF h SKIP LOCKED
),
updated AS (
    UPDATE event_heads h SET last_seq = i.new_seq, last_hash = i.new_hash
    FROM input i
    WHERE h.session_id = i.session_id AND h.session_id IN (SELECT session_id FROM held)
      AND h.last_hash = i.expected_hash
    RETURNING h.session_id
),
created AS (
    INSERT INTO event_heads (session_id, last_seq, last_hash)
    SELECT i.session_id, i.new_seq, i.new_hash FROM input i
    WHERE i.expected_seq = 0 AND (i.owner IS NULL OR i.session_id IN (SELECT session_id FROM fenced))
      AND pg_try_advisory_xact_lock(hashtextextended('tether.head:' || i.session_id, 0))
    ORDER BY i.session_id
    ON CONFLICT (session_id) DO NOTHING
    RETURNING session_id
),
moved AS (SELECT session_id FROM updated UNION ALL SELECT session_id FROM created),
logged AS (
    INSERT INTO events (session_id, seq, id, type, processed_at, body, prev_hash, hash)
    SELECT * FROM unnest(
        $14::text[], $15::bigint[], $16::text[], $17::text[], $18::text[], $19::jsonb[], $20::text[], $21::text[]
    ) AS e(session_id, seq, id, type, processed_at, body, prev_hash, hash)
    WHERE e.session_id IN (SELECT session_id FROM moved)
),
woken AS (
    INSERT INTO wakeups (session_id, wake_seq)
    SELECT i.session_id, i.wake_seq FROM input i
    WHERE i.wake_seq IS NOT NULL AND i.session_id IN (SELECT session_id FROM moved)
    ON CONFLICT (session_id) DO UPDATE SET wake_seq = excluded.wake_seq
),
marked AS (
    UPDATE resources r SET body = r.body
        || CASE WHEN i.status IS NULL THEN '{}'::jsonb
                ELSE jsonb_build_object('status', i.status, 'updated_at', i.updated_at) END
        || CASE WHEN NOT i.attention_set THEN '{}'::jsonb
                ELSE jsonb_build_object('tether_attention', CASE WHEN i.attention_keep
                     AND r.body ->> 'tether_attention' = 'error' THEN 'error' ELSE i.attention END) END
    FROM input i
    WHERE r.kind = 'session' AND r.id = i.session_id AND (i.status IS NOT NULL OR i.attention_set)
      AND i.session_id IN (SELECT session_id FROM moved)
),
notified AS (SELECT pg_notify($22, session_id) FROM moved)
SELECT i.session_id,
       i.owner IS NULL OR i.session_id IN (SELECT session_id FROM fenced) AS fenced,
       i.session_id IN (SELECT session_id FROM moved) AS applied,
       (SELECT count(*) FROM notified) AS notified
FROM input i
"""


def _arguments(ready: list[tuple[Pending, list[StoredEvent]]]) -> list[Any]:
    """The statement's 22 parameters: 13 arrays with a row per session, 8 with a row per event."""
    per_session: list[list[Any]] = [[] for _ in range(13)]
    per_event: list[list[Any]] = [[] for _ in range(8)]
    for pending, stored in ready:
        first, last = stored[0], stored[-1]
        fence: Lease | None = pending.work.fence
        bodies = [e.body for e in stored]
        status, attention = status_after(bodies), attention_after(bodies)
        wakes = [e.seq for e in stored if e.type in WAKES_HARNESS]
        row = (
            first.session_id,
            first.seq - 1,
            first.prev_hash,
            last.seq,
            last.hash,
            fence.owner if fence else None,
            fence.generation if fence else None,
            status,
            last.body["processed_at"],
            attention is not None,
            attention[0] if attention else False,
            attention[1] if attention else None,
            wakes[-1] if wakes else None,
        )
        for column, value in zip(per_session, row, strict=True):
            column.append(value)
        for e in stored:
            values = (e.session_id, e.seq, e.id, e.type, e.body["processed_at"], e.body, e.prev_hash, e.hash)
            for column, value in zip(per_event, values, strict=True):
                column.append(value)
    return [*per_session, *per_event, CHANNEL]
