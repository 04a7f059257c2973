"""SQLite's side of group commit: a batch of appends in one ``BEGIN IMMEDIATE`` transaction.

Each append runs in a savepoint of its own, so one that fails its fence (``LeaseLost``) or its
constraints is rolled back alone and the rest of the batch commits. A failure of the
transaction itself (busy, disk full, I/O error) fails the whole batch: none of it is durable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from gateway.store.group_commit import GroupCommit, Pending
from gateway.store.sqlite_conn import Connections, unavailable

Work = Callable[[sqlite3.Connection], Any]


def sqlite_group_commit(db: Connections, committed: Callable[[str], None]) -> GroupCommit:
    """Group commit on ``db``'s writer; each append's work is a ``Work`` on the connection, and
    ``committed`` wakes the readers of each session an append committed to."""

    async def commit(batch: list[Pending], group: GroupCommit) -> None:
        outcomes = await db.write(lambda conn: _run(conn, [pending.work for pending in batch]))
        for pending, (failed, value) in zip(batch, outcomes, strict=True):
            if failed:
                pending.fail(value)
            else:
                group.succeed(pending, value)

    return GroupCommit(commit, committed)


def _run(conn: sqlite3.Connection, works: list[Work]) -> list[tuple[bool, Any]]:
    """Every work in its own savepoint of one transaction: (failed, value) each."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcomes: list[tuple[bool, Any]] = []
        for work in works:
            conn.execute("SAVEPOINT one_append")
            try:
                value = work(conn)
            except Exception as exc:
                if isinstance(exc, sqlite3.Error) and unavailable(exc) is not None:
                    raise  # the transaction itself is in doubt: the whole batch fails
                conn.execute("ROLLBACK TO one_append")
                conn.execute("RELEASE one_append")
                outcomes.append((True, exc))
            else:
                conn.execute("RELEASE one_append")
                outcomes.append((False, value))
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction and not isinstance(exc, sqlite3.Error):
            conn.execute("ROLLBACK")  # the writer's own error handling rolls back after SQLite errors
        raise
    return outcomes
