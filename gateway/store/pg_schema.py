"""PostgreSQL schema migrations for the store.

Each step runs once, in order, and is recorded in ``schema_migrations``. Steps are
append-only: a released step is never edited, a change is a new step. All pending steps
run in one transaction under a transaction-scoped advisory lock, so two gateway
processes starting at once neither race on DDL nor apply a step twice; the second one
waits, then finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from gateway.store.attention_backfill import backfill_postgres


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    then: Callable[[asyncpg.Connection], Awaitable[None]] | None = None
    """A data step run after ``sql`` in the same transaction, for what SQL alone cannot derive."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "resources, agent versions, session log, leases",
        # Text timestamps use the "C" collation so that range filters compare bytes,
        # exactly like SQLite's default BINARY collation on ISO-8601 strings.
        """
        CREATE TABLE resources (
            pos bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            kind text NOT NULL,
            id text NOT NULL UNIQUE,
            created_at text COLLATE "C" NOT NULL,
            archived boolean NOT NULL DEFAULT false,
            body jsonb NOT NULL
        );
        CREATE INDEX resources_kind ON resources (kind, pos);

        CREATE TABLE agent_versions (
            pos bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            agent_id text NOT NULL,
            version integer NOT NULL,
            body jsonb NOT NULL,
            UNIQUE (agent_id, version)
        );

        -- One row per session holding its highest seq and that event's hash. Appends
        -- upsert it first, which takes the row lock that serialises appenders of one
        -- session across processes; a rolled-back append rolls the head back too, so
        -- seqs never have gaps and the hash chain never forks.
        CREATE TABLE event_heads (
            session_id text PRIMARY KEY,
            last_seq bigint NOT NULL,
            last_hash text NOT NULL
        );

        CREATE TABLE events (
            session_id text NOT NULL,
            seq bigint NOT NULL,
            id text NOT NULL UNIQUE,
            type text NOT NULL,
            processed_at text COLLATE "C" NOT NULL,
            body jsonb NOT NULL,
            prev_hash text NOT NULL,
            hash text NOT NULL,
            PRIMARY KEY (session_id, seq)
        );

        CREATE TABLE leases (
            session_id text PRIMARY KEY,
            owner text NOT NULL,
            generation bigint NOT NULL,
            expires_at double precision NOT NULL
        );
        """,
    ),
    Migration(
        2,
        "durable wake-ups: client input the harness has yet to answer",
        # wake_seq: the session's newest event the harness must look at (a user message, a
        # confirmation...), written in the append's transaction; answered_seq: how far a run
        # has looked. Pickup resumes any session where the first is past the second.
        """
        CREATE TABLE wakeups (
            session_id text PRIMARY KEY,
            wake_seq bigint NOT NULL,
            answered_seq bigint NOT NULL DEFAULT 0
        );
        """,
    ),
    Migration(
        3,
        "tether_attention for sessions logged before appends kept it",
        "",
        then=backfill_postgres,
    ),
)

# An arbitrary constant naming "tether schema migrations" among advisory locks.
MIGRATION_LOCK_KEY = 0x7E7E_5C4E_0001


async def migrate(conn: asyncpg.Connection) -> list[int]:
    """Apply the pending migrations; returns the versions applied by this call."""
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        for migration in MIGRATIONS:
            if migration.version in done:
                continue
            if migration.sql:
                await conn.execute(migration.sql)
            if migration.then is not None:
                await migration.then(conn)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration.version)
    return applied


def _check_order() -> None:
    versions = [m.version for m in MIGRATIONS]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must be 1..N in order, got {versions}")


_check_order()
