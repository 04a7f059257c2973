"""PostgreSQL implementation of the store: the scale-out backend.

Several gateway processes share one database. What SQLite gets from a single
connection under a lock, this backend gets from the database itself:

- seqs and the hash chain: appends upsert the session's row in ``event_heads`` (last
  seq, last hash) first; the row lock serialises appenders across connections and
  processes, and a rolled-back append rolls the head back with it, so seqs stay
  gap-free and each event links to its real predecessor.
- fencing: a fenced append reads the lease ``FOR SHARE`` in the same transaction, so a
  takeover (which updates that row) waits for the append to commit, or the append sees
  the new owner and fails.
- wake-ups: appends ``pg_notify`` inside their transaction (delivered only on commit);
  one LISTEN connection per store fans them out to in-process waiters, so a process
  wakes when another one appends.
- time: lease expiry uses the database's clock, never the gateway host's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

import anyio
import asyncpg

from gateway.store.base import (
    Body,
    EventQuery,
    Lease,
    LeaseLost,
    Mutation,
    Page,
    StoredEvent,
)
from gateway.store.chain import ChainLink
from gateway.store.pg_batch import LOCK_TIMEOUT, Append, Heads, pg_group_commit
from gateway.store.pg_errors import translate_errors
from gateway.store.pg_listener import CHANNEL, GONE, Listener, Waiters
from gateway.store.pg_schema import migrate
from gateway.store.text_search import like_pattern, postgres_match

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a new connection: an unreachable server is an outage, not a hang."""

APPENDER_APPLICATION_NAME = "tether-appender"
"""Names the group-commit connection in ``pg_stat_activity``."""

_NOW = "extract(epoch FROM clock_timestamp())::float8"


@translate_errors
class PostgresStore:
    """Create with ``await PostgresStore.connect(dsn)``; the constructor does no I/O."""

    def __init__(
        self, pool: asyncpg.Pool, appender: asyncpg.Pool, listener: Listener, waiters: Waiters
    ) -> None:
        self._pool = pool
        self._appender = appender
        self._listener = listener
        self._waiters = waiters
        self._heads = Heads()
        self._appends = pg_group_commit(appender, pool, self._heads, waiters.notify)

    @property
    def append_commits(self) -> int:
        """Statements that carried appends; fewer than appends when group commit batched them."""
        return self._appends.commits

    @classmethod
    async def connect(
        cls, dsn: str, *, min_size: int = 1, max_size: int = 10, ping_interval: float = 5.0
    ) -> PostgresStore:
        """Open the pool, apply pending migrations, and start listening for appends.

        ``ping_interval`` bounds how long a silently dead LISTEN connection goes unnoticed.
        """
        pool = await _pool(dsn, min_size, max_size)
        appender: asyncpg.Pool | None = None
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            # Group commit writes on one connection at a time; its one statement shape gets
            # a generic plan, since planning it afresh would cost more than running it.
            appender = await _pool(
                dsn,
                1,
                1,
                plan_cache_mode="force_generic_plan",
                lock_timeout=LOCK_TIMEOUT,
                application_name=APPENDER_APPLICATION_NAME,
            )
            waiters = Waiters()
            listener = Listener(dsn, waiters, ping_interval)
            await listener.start()
        except BaseException:
            await pool.close()
            if appender is not None:
                await appender.close()
            raise
        return cls(pool, appender, listener, waiters)

    async def close(self) -> None:
        await self._listener.stop()
        await self._appender.close()
        await self._pool.close()

    async def check(self) -> None:
        await self._pool.fetchval("SELECT 1", timeout=5.0)

    # Resources ---------------------------------------------------------------------------

    async def insert(self, kind: str, body: Body) -> None:
        await _insert(self._pool, kind, body)

    async def insert_many(self, kind: str, bodies: Sequence[Body]) -> None:
        rows = [
            (kind, body["id"], body["created_at"], bool(body.get("archived_at")), body) for body in bodies
        ]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.executemany(INSERT_RESOURCE, rows)

    async def get(self, kind: str, resource_id: str) -> Body | None:
        body: Body | None = await self._pool.fetchval(
            "SELECT body FROM resources WHERE kind = $1 AND id = $2", kind, resource_id
        )
        return body

    async def update(self, kind: str, resource_id: str, mutate: Mutation) -> Body | None:
        async with self._pool.acquire() as conn, conn.transaction():
            return await _update(conn, kind, resource_id, mutate)

    async def delete(self, kind: str, resource_id: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(
                "DELETE FROM resources WHERE kind = $1 AND id = $2", kind, resource_id
            )
            if kind == "session":
                # Lease before head: the same lock order as a fenced append, so no deadlock.
                await conn.execute("DELETE FROM leases WHERE session_id = $1", resource_id)
                await conn.execute("DELETE FROM event_heads WHERE session_id = $1", resource_id)
                await conn.execute("DELETE FROM wakeups WHERE session_id = $1", resource_id)
                await conn.execute("DELETE FROM events WHERE session_id = $1", resource_id)
                # Streams of the session, in every process, learn that it is gone.
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, GONE + resource_id)
        if kind == "session":
            self._heads.forget(resource_id)
            self._waiters.notify(resource_id, gone=True)
        return bool(status != "DELETE 0")

    async def list_resources(
        self,
        kind: str,
        *,
        cursor: int | None,
        limit: int,
        include_archived: bool,
        equals: dict[str, Any] | None = None,
        created_gte: str | None = None,
        created_lte: str | None = None,
        order: Literal["asc", "desc"] = "desc",
        one_of: dict[str, Sequence[Any]] | None = None,
        not_null: Sequence[str] = (),
        text: str | None = None,
    ) -> Page:
        p = _Params()
        clauses = [f"kind = {p(kind)}"]
        if not include_archived:
            clauses.append("NOT archived")
        for path, value in (equals or {}).items():
            # jsonb equality is typed like json_extract's: 1 matches 1 (or 1.0), never "1".
            # A None value becomes SQL NULL and matches nothing, as in SQLite.
            clauses.append(f"body #> {p(path.split('.'))}::text[] = {p(value)}::jsonb")
        for path, values in (one_of or {}).items():
            found = p(path.split("."))
            listed = ", ".join(f"{p(value)}::jsonb" for value in values)
            clauses.append(f"body #> {found}::text[] = ANY(ARRAY[{listed}]::jsonb[])")
        for path in not_null:
            clauses.append(f"jsonb_typeof(body #> {p(path.split('.'))}::text[]) <> 'null'")
        if text:
            clauses.append(postgres_match(p(like_pattern(text))))
        if created_gte is not None:
            clauses.append(f"created_at >= {p(created_gte)}")
        if created_lte is not None:
            clauses.append(f"created_at <= {p(created_lte)}")
        if cursor is not None:
            clauses.append(f"pos {'<' if order == 'desc' else '>'} {p(cursor)}")
        direction = "DESC" if order == "desc" else "ASC"
        rows = await self._pool.fetch(
            f"SELECT pos, body FROM resources WHERE {' AND '.join(clauses)} "
            f"ORDER BY pos {direction} LIMIT {p(limit + 1)}",
            *p.values,
        )
        return _page(rows, limit)

    # Agents ------------------------------------------------------------------------------

    async def insert_agent(self, body: Body) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await _insert(conn, "agent", body)
            await _insert_version(conn, body)

    async def update_agent(self, agent_id: str, mutate: Mutation) -> Body | None:
        before: list[int] = []

        def tracking(body: Body) -> Body:
            before.append(body["version"])
            return mutate(body)

        async with self._pool.acquire() as conn, conn.transaction():
            body = await _update(conn, "agent", agent_id, tracking)
            if body is not None and body["version"] != before[0]:
                await _insert_version(conn, body)
        return body

    async def get_agent_version(self, agent_id: str, version: int) -> Body | None:
        body: Body | None = await self._pool.fetchval(
            "SELECT body FROM agent_versions WHERE agent_id = $1 AND version = $2", agent_id, version
        )
        return body

    async def list_agent_versions(self, agent_id: str, *, cursor: int | None, limit: int) -> Page:
        p = _Params()
        sql = f"SELECT pos, body FROM agent_versions WHERE agent_id = {p(agent_id)}"
        if cursor is not None:
            sql += f" AND pos < {p(cursor)}"
        sql += f" ORDER BY pos DESC LIMIT {p(limit + 1)}"
        return _page(await self._pool.fetch(sql, *p.values), limit)

    # The session log ---------------------------------------------------------------------

    async def append_events(
        self, session_id: str, events: Sequence[Body], fence: Lease | None = None
    ) -> list[StoredEvent]:
        # Local waiters are woken at commit (our own listener hears the NOTIFY too, but waking
        # them then saves the round trip and keeps them prompt while it is reconnecting).
        stored: list[StoredEvent] = await self._appends.submit(session_id, Append(events, fence))
        return stored

    async def read_events(self, session_id: str, query: EventQuery) -> list[StoredEvent]:
        p = _Params()
        clauses = [f"session_id = {p(session_id)}", f"seq > {p(query.after_seq)}"]
        if query.before_seq is not None:
            clauses.append(f"seq < {p(query.before_seq)}")
        if query.types:
            clauses.append(f"type = ANY({p(list(query.types))}::text[])")
        if query.processed_after is not None:
            op = ">=" if query.processed_after_inclusive else ">"
            clauses.append(f"processed_at {op} {p(query.processed_after)}")
        if query.processed_before is not None:
            op = "<=" if query.processed_before_inclusive else "<"
            clauses.append(f"processed_at {op} {p(query.processed_before)}")
        sql = (
            f"SELECT seq, id, type, body, prev_hash, hash FROM events WHERE {' AND '.join(clauses)} "
            f"ORDER BY seq {'DESC' if query.order == 'desc' else 'ASC'}"
        )
        if query.limit is not None:
            sql += f" LIMIT {p(query.limit)}"
        rows = await self._pool.fetch(sql, *p.values)
        return [
            StoredEvent(session_id, r["seq"], r["id"], r["type"], r["body"], r["prev_hash"], r["hash"])
            for r in rows
        ]

    async def last_seq(self, session_id: str) -> int:
        last = await self._pool.fetchval("SELECT last_seq FROM event_heads WHERE session_id = $1", session_id)
        return int(last or 0)

    async def event_seq(self, session_id: str, event_id: str) -> int | None:
        seq = await self._pool.fetchval(
            "SELECT seq FROM events WHERE session_id = $1 AND id = $2", session_id, event_id
        )
        return None if seq is None else int(seq)

    async def read_chain(self, session_id: str) -> list[ChainLink]:
        rows = await self._pool.fetch(
            "SELECT seq, id, prev_hash, hash, body FROM events WHERE session_id = $1 ORDER BY seq", session_id
        )
        return [ChainLink(r["seq"], r["id"], r["prev_hash"], r["hash"], r["body"]) for r in rows]

    async def wait_for_append(self, session_id: str, after_seq: int, timeout: float) -> bool:
        # Re-check after every wake-up: a wake can also mean "the listener reconnected and
        # may have missed something", which is not by itself news.
        # A deleted session's waiters wake with ``gone`` (also those that start waiting later).
        deadline = anyio.current_time() + timeout
        while True:
            with self._waiters.watch(session_id) as appended:
                if await self.last_seq(session_id) > after_seq:
                    return True
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    return False
                with anyio.move_on_after(remaining):
                    await appended.wait()
                if appended.gone:
                    return False

    # Leases ------------------------------------------------------------------------------

    async def acquire_lease(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        # One statement: take a missing lease, keep our own (same generation), or take over
        # an expired one (generation + 1). A live lease of another owner leaves no row.
        row = await self._pool.fetchrow(
            f"WITH now AS (SELECT {_NOW} AS t) "
            "INSERT INTO leases AS l (session_id, owner, generation, expires_at) "
            "SELECT $1, $2, 1, now.t + $3::float8 FROM now "
            "ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner, "
            "generation = CASE WHEN l.owner = excluded.owner THEN l.generation ELSE l.generation + 1 END, "
            "expires_at = excluded.expires_at "
            "WHERE l.owner = excluded.owner OR l.expires_at < (SELECT t FROM now) "
            "RETURNING generation, expires_at",
            session_id,
            owner,
            ttl,
        )
        if row is None:
            return None
        return Lease(session_id, owner, int(row["generation"]), float(row["expires_at"]))

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        expires = await self._pool.fetchval(
            f"UPDATE leases SET expires_at = {_NOW} + $4::float8 "
            "WHERE session_id = $1 AND owner = $2 AND generation = $3 RETURNING expires_at",
            lease.session_id,
            lease.owner,
            lease.generation,
            ttl,
        )
        if expires is None:
            raise LeaseLost(f"lease on {lease.session_id} generation {lease.generation} was taken over")
        return Lease(lease.session_id, lease.owner, lease.generation, float(expires))

    async def release_lease(self, lease: Lease) -> None:
        # Kept (not deleted) so the generation survives and keeps growing.
        await self._pool.execute(
            "UPDATE leases SET expires_at = 0 WHERE session_id = $1 AND owner = $2 AND generation = $3",
            lease.session_id,
            lease.owner,
            lease.generation,
        )

    async def sessions_needing_harness(self, limit: int) -> list[str]:
        # SKIP LOCKED: concurrent scanners (and in-flight updates of a session) never block
        # a scan; a skipped session is picked up by the scanner holding it or the next scan.
        rows = await self._pool.fetch(
            "SELECT r.id FROM resources r LEFT JOIN leases l ON l.session_id = r.id "
            "LEFT JOIN wakeups w ON w.session_id = r.id "
            "WHERE r.kind = 'session' AND NOT r.archived "
            "AND (r.body ->> 'status' IN ('running', 'rescheduling') OR w.wake_seq > w.answered_seq) "
            f"AND (l.session_id IS NULL OR l.expires_at < {_NOW}) "
            "ORDER BY r.pos LIMIT $1 FOR UPDATE OF r SKIP LOCKED",
            limit,
        )
        return [row["id"] for row in rows]

    async def mark_answered(self, lease: Lease, through_seq: int) -> None:
        await self._pool.execute(
            "UPDATE wakeups SET answered_seq = GREATEST(answered_seq, $2) WHERE session_id = $1 "
            "AND EXISTS (SELECT 1 FROM leases WHERE session_id = $1 AND owner = $3 AND generation = $4)",
            lease.session_id,
            through_seq,
            lease.owner,
            lease.generation,
        )


class _Params:
    """Collects query arguments and hands out their ``$n`` placeholders."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


async def _pool(dsn: str, min_size: int, max_size: int, **server_settings: str) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        timeout=CONNECT_TIMEOUT,
        server_settings=server_settings or None,
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset on release: the store never leaves session state behind (no SET, no
    LISTEN, no session-level advisory lock, no open cursor), and asyncpg itself rolls back
    an open transaction. The default reset would cost a round trip on every release."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    """jsonb columns and parameters travel as Python objects."""
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


INSERT_RESOURCE = "INSERT INTO resources (kind, id, created_at, archived, body) VALUES ($1, $2, $3, $4, $5)"


async def _insert(conn: asyncpg.Connection | asyncpg.Pool, kind: str, body: Body) -> None:
    await conn.execute(
        INSERT_RESOURCE,
        kind,
        body["id"],
        body["created_at"],
        bool(body.get("archived_at")),
        body,
    )


async def _insert_version(conn: asyncpg.Connection, body: Body) -> None:
    await conn.execute(
        "INSERT INTO agent_versions (agent_id, version, body) VALUES ($1, $2, $3)",
        body["id"],
        body["version"],
        body,
    )


async def _update(conn: asyncpg.Connection, kind: str, resource_id: str, mutate: Mutation) -> Body | None:
    """Read-modify-write under the row lock; the caller owns the transaction."""
    current = await conn.fetchval(
        "SELECT body FROM resources WHERE kind = $1 AND id = $2 FOR UPDATE", kind, resource_id
    )
    if current is None:
        return None
    body = mutate(current)
    await conn.execute(
        "UPDATE resources SET body = $3, archived = $4 WHERE kind = $1 AND id = $2",
        kind,
        resource_id,
        body,
        bool(body.get("archived_at")),
    )
    return body


def _page(rows: Sequence[asyncpg.Record], limit: int) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=[row["body"] for row in rows], next_cursor=int(rows[-1]["pos"]) if more else None)
