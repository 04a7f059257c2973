"""The SQLite store's tables: created if missing when a store opens, then migrated.

``PRAGMA user_version`` counts the data migrations applied (the tables themselves are
``CREATE ... IF NOT EXISTS``); each runs once, in a write transaction that re-checks the
version, so two processes opening one file never apply a step twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from gateway.store.attention_backfill import backfill_sqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    rowid_ INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS resources_kind ON resources (kind, rowid_);
CREATE TABLE IF NOT EXISTS agent_versions (
    rowid_ INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (agent_id, version)
);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    processed_at TEXT NOT NULL,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    generation INTEGER NOT NULL,
    expires_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS wakeups (
    session_id TEXT PRIMARY KEY,
    wake_seq INTEGER NOT NULL,
    answered_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS health (
    id INTEGER PRIMARY KEY,
    checked_at REAL NOT NULL
);
"""

MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    backfill_sqlite,  # 1: tether_attention for sessions logged before appends kept it
)


def migrate(conn: sqlite3.Connection) -> None:
    """Create missing tables, then apply the pending data migrations (on the writer)."""
    conn.executescript(SCHEMA)
    if _version(conn) >= len(MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(_version(conn), len(MIGRATIONS)):
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])
