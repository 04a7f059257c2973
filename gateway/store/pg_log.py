"""Appending to a session's log inside one PostgreSQL transaction.

Fence check, the chain's next links (over the bodies as jsonb stores them), commit-time
``processed_at``, the durable wake-up, the session's status and the NOTIFY all commit together.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from gateway.store.pg_listener import CHANNEL


async def append_to_log(
    conn: asyncpg.Connection, session_id: str, events: Sequence[Body], fence: Lease | None
) -> list[StoredEvent]:
    if fence is not None:
        held = await conn.fetchrow(
            "SELECT owner, generation FROM leases WHERE session_id = $1 FOR SHARE", session_id
        )
        if held is None or (held["owner"], held["generation"]) != (fence.owner, fence.generation):
            raise LeaseLost(f"lease on {session_id} generation {fence.generation} was taken over")
    if not events:
        return []
    # The head's creation is announced to group commit (``pg_batch``), which skips a session
    # whose head is being created rather than wait on the insert.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('tether.head:' || $1, 0))", session_id)
    # Lock the head (creating it on the first append) and have the database
    # normalise the bodies as jsonb stores them (numbers, key order), so the
    # hashes cover exactly the bodies that reads and ``read_chain`` return.
    head = await conn.fetchrow(
        "WITH head AS ("
        " INSERT INTO event_heads AS h (session_id, last_seq, last_hash) VALUES ($1, 0, $2)"
        " ON CONFLICT (session_id) DO UPDATE SET last_seq = h.last_seq"
        " RETURNING last_seq, last_hash) "
        "SELECT last_seq, last_hash, "
        " (SELECT processed_at FROM events e WHERE e.session_id = $1 AND e.seq = head.last_seq)"
        " AS last_processed_at, "
        " ARRAY(SELECT b FROM unnest($3::jsonb[]) WITH ORDINALITY AS t(b, n) ORDER BY n) AS bodies "
        "FROM head",
        session_id,
        GENESIS,
        list(events),
    )
    bodies = head["bodies"]
    for body, moment in zip(bodies, commit_times(head["last_processed_at"], len(bodies)), strict=True):
        body["processed_at"] = moment  # the commit time, in the body's own (jsonb) key order
    stored = _chain(session_id, head["last_seq"], head["last_hash"], bodies)
    await conn.executemany(
        "INSERT INTO events (session_id, seq, id, type, processed_at, body, prev_hash, hash) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        [
            (session_id, e.seq, e.id, e.type, e.body["processed_at"], e.body, e.prev_hash, e.hash)
            for e in stored
        ],
    )
    await conn.execute(
        "UPDATE event_heads SET last_seq = $2, last_hash = $3 WHERE session_id = $1",
        session_id,
        stored[-1].seq,
        stored[-1].hash,
    )
    wakes = [e.seq for e in stored if e.type in WAKES_HARNESS]
    if wakes:
        await conn.execute(
            "INSERT INTO wakeups (session_id, wake_seq) VALUES ($1, $2) "
            "ON CONFLICT (session_id) DO UPDATE SET wake_seq = excluded.wake_seq",
            session_id,
            wakes[-1],
        )
    status = status_after(events)
    if status is not None:
        await conn.execute(
            "UPDATE resources SET body = body || jsonb_build_object('status', $2::text, 'updated_at', $3::text) "
            "WHERE kind = 'session' AND id = $1",
            session_id,
            status,
            stored[-1].body["processed_at"],
        )
    attention = attention_after(events)
    if attention is not None:
        await conn.execute(
            "UPDATE resources SET body = body || jsonb_build_object('tether_attention', CASE WHEN $2 "
            "AND body ->> 'tether_attention' = 'error' THEN 'error' ELSE $3::text END) "
            "WHERE kind = 'session' AND id = $1",
            session_id,
            *attention,
        )
    await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, session_id)
    return stored


def _chain(session_id: str, last_seq: int, last_hash: str, bodies: Sequence[Body]) -> list[StoredEvent]:
    """Number the bodies after the head and link each to its predecessor's hash."""
    stored, prev = [], last_hash
    for offset, body in enumerate(bodies, start=1):
        seq = last_seq + offset
        digest = link_hash(session_id, seq, prev, body)
        stored.append(StoredEvent(session_id, seq, body["id"], body["type"], body, prev, digest))
        prev = digest
    return stored
