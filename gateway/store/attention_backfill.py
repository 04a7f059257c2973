"""Backfill of ``tether_attention`` for sessions logged before the field existed.

The append path keeps the field as events arrive (``attention_after``); a session that was
already waiting on ``requires_action`` when the gateway was upgraded never gets another
append, so each backend's migration derives the value once from the session's log, through
the same rule, replayed over its status and error events in order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from itertools import groupby

import asyncpg

from gateway.store.base import Body, attention_after

ATTENTION_EVENTS = (
    "session.status_running",
    "session.status_rescheduled",
    "session.status_idle",
    "session.status_terminated",
    "session.error",
)
"""The only event types ``attention_after`` reacts to; the rest of the log is not read."""


def derived(rows: Iterable[tuple[str, Body]]) -> list[tuple[str, str]]:
    """``(session_id, attention)`` for each session whose ordered events leave one set.

    A session starts without the field, so ``keep_error`` has nothing to keep: the value of
    the replayed change is the answer."""
    found = []
    for session_id, events in groupby(rows, key=lambda row: row[0]):
        change = attention_after([body for _, body in events])
        if change is not None and change[1] is not None:
            found.append((session_id, change[1]))
    return found


_TYPES = ", ".join(f"'{kind}'" for kind in ATTENTION_EVENTS)


def backfill_sqlite(conn: sqlite3.Connection) -> None:
    """Run inside the caller's write transaction (``sqlite_schema.migrate``)."""
    import json

    rows = conn.execute(
        "SELECT e.session_id, e.body FROM events e JOIN resources r ON r.kind = 'session' "
        f"AND r.id = e.session_id WHERE e.type IN ({_TYPES}) ORDER BY e.session_id, e.seq"
    )
    values = derived((session_id, json.loads(body)) for session_id, body in rows)
    conn.executemany(
        "UPDATE resources SET body = json_set(body, '$.tether_attention', ?) WHERE kind = 'session' AND id = ?",
        [(attention, session_id) for session_id, attention in values],
    )


async def backfill_postgres(conn: asyncpg.Connection) -> None:
    """Run inside the migration transaction (``pg_schema.migrate``); jsonb decodes to dicts."""
    rows = await conn.fetch(
        "SELECT e.session_id, e.body FROM events e JOIN resources r ON r.kind = 'session' "
        "AND r.id = e.session_id WHERE e.type = ANY($1::text[]) ORDER BY e.session_id, e.seq",
        list(ATTENTION_EVENTS),
    )
    values = derived((row["session_id"], row["body"]) for row in rows)
    await conn.executemany(
        "UPDATE resources SET body = body || jsonb_build_object('tether_attention', $2::text) "
        "WHERE kind = 'session' AND id = $1",
        values,
    )
