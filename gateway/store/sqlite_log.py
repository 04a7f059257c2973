"""Appending to a session's log inside one SQLite write transaction.

Fence check, the chain's next links, commit-time ``processed_at``, the durable wake-up and
the session's status all change together or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

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


def append_to_log(
    conn: sqlite3.Connection, session_id: str, events: Sequence[Body], fence: Lease | None
) -> list[StoredEvent]:
    if fence is not None:
        held = conn.execute(
            "SELECT owner, generation FROM leases WHERE session_id = ?", (session_id,)
        ).fetchone()
        if held != (fence.owner, fence.generation):
            raise LeaseLost(f"lease on {session_id} generation {fence.generation} was taken over")
    head = conn.execute(
        "SELECT seq, hash, processed_at FROM events WHERE session_id = ? ORDER BY seq DESC LIMIT 1",
        (session_id,),
    ).fetchone()
    last, prev, last_time = head if head else (0, GENESIS, None)
    stored = []
    times = commit_times(last_time, len(events))
    for offset, given in enumerate(events, start=1):
        seq = last + offset
        body = {**given, "processed_at": times[offset - 1]}
        digest = link_hash(session_id, seq, prev, body)
        event = StoredEvent(session_id, seq, body["id"], body["type"], body, prev, digest)
        conn.execute(
            "INSERT INTO events (session_id, seq, id, type, processed_at, body, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                seq,
                event.id,
                event.type,
                body["processed_at"],
                json.dumps(body),
                prev,
                digest,
            ),
        )
        stored.append(event)
        prev = digest
    wakes = [e.seq for e in stored if e.type in WAKES_HARNESS]
    if wakes:
        conn.execute(
            "INSERT INTO wakeups (session_id, wake_seq) VALUES (?, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET wake_seq = excluded.wake_seq",
            (session_id, wakes[-1]),
        )
    status = status_after(events)
    if status is not None:
        conn.execute(
            "UPDATE resources SET body = json_set(body, '$.status', ?, '$.updated_at', ?) "
            "WHERE kind = 'session' AND id = ?",
            (status, times[-1], session_id),
        )
    attention = attention_after(events)
    if attention is not None:
        conn.execute(
            "UPDATE resources SET body = json_set(body, '$.tether_attention', CASE WHEN ? AND "
            "json_extract(body, '$.tether_attention') = 'error' THEN 'error' ELSE ? END) "
            "WHERE kind = 'session' AND id = ?",
            (*attention, session_id),
        )
    return stored
