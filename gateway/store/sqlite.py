"""SQLite (WAL) implementation of the store: the embedded default.

Writes go through one connection under a lock, so every read-modify-write is atomic;
reads use connections of their own and never wait for a write (see ``sqlite_conn``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio

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
from gateway.store.notifier import Notifier
from gateway.store.sqlite_batch import sqlite_group_commit
from gateway.store.sqlite_conn import BUSY_TIMEOUT_SECONDS, Connections
from gateway.store.sqlite_log import append_to_log
from gateway.store.sqlite_schema import migrate
from gateway.store.text_search import SQLITE_MATCH, like_pattern

T = TypeVar("T")


def _json_path(dotted: str) -> str:
    return "$." + dotted


class SQLiteStore:
    def __init__(self, path: Path | str, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self._path = str(path)
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._db = Connections(self._path, migrate, busy_timeout)
        self._notifier = Notifier()
        self._appends = sqlite_group_commit(self._db, self._notifier.notify)

    @property
    def append_commits(self) -> int:
        """Commits that carried appends; fewer than appends when group commit batched them."""
        return self._appends.commits

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """A read: on a connection of its own, never behind a write."""
        return await self._db.read(fn)

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await self._db.write(call)

    async def close(self) -> None:
        await self._db.close()

    async def check(self) -> None:
        def probe(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT OR REPLACE INTO health (id, checked_at) VALUES (1, ?)", (time.time(),))
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        await self._db.write(probe, abandon_on_cancel=True)

    # Resources ---------------------------------------------------------------------------

    async def insert(self, kind: str, body: Body) -> None:
        await self._db.write(lambda conn: self._insert(conn, kind, body))

    async def insert_many(self, kind: str, bodies: Sequence[Body]) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            for body in bodies:
                self._insert(conn, kind, body)

        await self._transaction(insert)

    @staticmethod
    def _insert(conn: sqlite3.Connection, kind: str, body: Body) -> None:
        conn.execute(
            "INSERT INTO resources (kind, id, created_at, archived, body) VALUES (?, ?, ?, ?, ?)",
            (kind, body["id"], body["created_at"], int(bool(body.get("archived_at"))), json.dumps(body)),
        )

    async def get(self, kind: str, resource_id: str) -> Body | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT body FROM resources WHERE kind = ? AND id = ?", (kind, resource_id)
            ).fetchone()
        )
        return json.loads(row[0]) if row else None

    @staticmethod
    def _update(conn: sqlite3.Connection, kind: str, resource_id: str, mutate: Mutation) -> Body | None:
        row = conn.execute(
            "SELECT body FROM resources WHERE kind = ? AND id = ?", (kind, resource_id)
        ).fetchone()
        if row is None:
            return None
        body = mutate(json.loads(row[0]))
        conn.execute(
            "UPDATE resources SET body = ?, archived = ? WHERE kind = ? AND id = ?",
            (json.dumps(body), int(bool(body.get("archived_at"))), kind, resource_id),
        )
        return body

    async def update(self, kind: str, resource_id: str, mutate: Mutation) -> Body | None:
        return await self._transaction(lambda conn: self._update(conn, kind, resource_id, mutate))

    async def delete(self, kind: str, resource_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM resources WHERE kind = ? AND id = ?", (kind, resource_id))
            if kind == "session":
                conn.execute("DELETE FROM events WHERE session_id = ?", (resource_id,))
                conn.execute("DELETE FROM leases WHERE session_id = ?", (resource_id,))
                conn.execute("DELETE FROM wakeups WHERE session_id = ?", (resource_id,))
            return cursor.rowcount > 0

        deleted = await self._transaction(delete)
        if kind == "session":
            self._notifier.notify(resource_id, gone=True)  # its streams learn that it is gone
        return deleted

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
        clauses = ["kind = ?"]
        params: list[Any] = [kind]
        if not include_archived:
            clauses.append("archived = 0")
        for path, value in (equals or {}).items():
            clauses.append("json_extract(body, ?) = ?")
            params += [_json_path(path), value]
        for path, values in (one_of or {}).items():
            clauses.append(f"json_extract(body, ?) IN ({', '.join('?' * len(values)) or 'NULL'})")
            params += [_json_path(path), *values]
        for path in not_null:
            clauses.append("json_extract(body, ?) IS NOT NULL")
            params.append(_json_path(path))
        if text:
            clauses.append(SQLITE_MATCH)
            params += [like_pattern(text)] * 3
        if created_gte is not None:
            clauses.append("created_at >= ?")
            params.append(created_gte)
        if created_lte is not None:
            clauses.append("created_at <= ?")
            params.append(created_lte)
        if cursor is not None:
            clauses.append("rowid_ < ?" if order == "desc" else "rowid_ > ?")
            params.append(cursor)
        direction = "DESC" if order == "desc" else "ASC"
        sql = (
            f"SELECT rowid_, body FROM resources WHERE {' AND '.join(clauses)} "
            f"ORDER BY rowid_ {direction} LIMIT ?"
        )
        rows = await self._read(lambda conn: conn.execute(sql, (*params, limit + 1)).fetchall())
        return _page(rows, limit)

    # Agents ------------------------------------------------------------------------------

    async def insert_agent(self, body: Body) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            self._insert(conn, "agent", body)
            self._insert_version(conn, body)

        await self._transaction(insert)

    @staticmethod
    def _insert_version(conn: sqlite3.Connection, body: Body) -> None:
        conn.execute(
            "INSERT INTO agent_versions (agent_id, version, body) VALUES (?, ?, ?)",
            (body["id"], body["version"], json.dumps(body)),
        )

    async def update_agent(self, agent_id: str, mutate: Mutation) -> Body | None:
        def update(conn: sqlite3.Connection) -> Body | None:
            before: list[int] = []

            def tracking(body: Body) -> Body:
                before.append(body["version"])
                return mutate(body)

            body = self._update(conn, "agent", agent_id, tracking)
            if body is not None and body["version"] != before[0]:
                self._insert_version(conn, body)
            return body

        return await self._transaction(update)

    async def get_agent_version(self, agent_id: str, version: int) -> Body | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT body FROM agent_versions WHERE agent_id = ? AND version = ?", (agent_id, version)
            ).fetchone()
        )
        return json.loads(row[0]) if row else None

    async def list_agent_versions(self, agent_id: str, *, cursor: int | None, limit: int) -> Page:
        sql = "SELECT rowid_, body FROM agent_versions WHERE agent_id = ?"
        params: list[Any] = [agent_id]
        if cursor is not None:
            sql += " AND rowid_ < ?"
            params.append(cursor)
        sql += " ORDER BY rowid_ DESC LIMIT ?"
        rows = await self._read(lambda conn: conn.execute(sql, (*params, limit + 1)).fetchall())
        return _page(rows, limit)

    # The session log ---------------------------------------------------------------------

    async def append_events(
        self, session_id: str, events: Sequence[Body], fence: Lease | None = None
    ) -> list[StoredEvent]:
        def append(conn: sqlite3.Connection) -> list[StoredEvent]:
            return append_to_log(conn, session_id, events, fence)

        stored: list[StoredEvent] = await self._appends.submit(session_id, append)
        return stored  # its readers were woken at commit

    async def read_events(self, session_id: str, query: EventQuery) -> list[StoredEvent]:
        clauses = ["session_id = ?", "seq > ?"]
        params: list[Any] = [session_id, query.after_seq]
        if query.before_seq is not None:
            clauses.append("seq < ?")
            params.append(query.before_seq)
        if query.types:
            clauses.append(f"type IN ({', '.join('?' for _ in query.types)})")
            params += list(query.types)
        if query.processed_after is not None:
            clauses.append("processed_at >= ?" if query.processed_after_inclusive else "processed_at > ?")
            params.append(query.processed_after)
        if query.processed_before is not None:
            clauses.append("processed_at <= ?" if query.processed_before_inclusive else "processed_at < ?")
            params.append(query.processed_before)
        sql = (
            f"SELECT seq, id, type, body, prev_hash, hash FROM events WHERE {' AND '.join(clauses)} "
            f"ORDER BY seq {'DESC' if query.order == 'desc' else 'ASC'}"
        )
        if query.limit is not None:
            sql += " LIMIT ?"
            params.append(query.limit)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [
            StoredEvent(session_id, seq, id_, type_, json.loads(body), prev, digest)
            for seq, id_, type_, body, prev, digest in rows
        ]

    async def last_seq(self, session_id: str) -> int:
        (last,) = await self._read(
            lambda conn: conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE session_id = ?", (session_id,)
            ).fetchone()
        )
        return int(last)

    async def event_seq(self, session_id: str, event_id: str) -> int | None:
        row = await self._read(
            lambda conn: conn.execute(
                "SELECT seq FROM events WHERE session_id = ? AND id = ?", (session_id, event_id)
            ).fetchone()
        )
        return int(row[0]) if row else None

    # Leases ------------------------------------------------------------------------------

    async def acquire_lease(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        def acquire(conn: sqlite3.Connection) -> Lease | None:
            now = time.time()
            row = conn.execute(
                "SELECT owner, generation, expires_at FROM leases WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is None:
                generation = 1
            elif row[0] == owner:
                generation = row[1]
            elif row[2] < now:
                generation = row[1] + 1
            else:
                return None
            conn.execute(
                "INSERT INTO leases (session_id, owner, generation, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner, "
                "generation = excluded.generation, expires_at = excluded.expires_at",
                (session_id, owner, generation, now + ttl),
            )
            return Lease(session_id, owner, generation, now + ttl)

        return await self._transaction(acquire)

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        def renew(conn: sqlite3.Connection) -> Lease:
            expires = time.time() + ttl
            cursor = conn.execute(
                "UPDATE leases SET expires_at = ? WHERE session_id = ? AND owner = ? AND generation = ?",
                (expires, lease.session_id, lease.owner, lease.generation),
            )
            if cursor.rowcount == 0:
                raise LeaseLost(f"lease on {lease.session_id} generation {lease.generation} was taken over")
            return Lease(lease.session_id, lease.owner, lease.generation, expires)

        return await self._transaction(renew)

    async def release_lease(self, lease: Lease) -> None:
        await self._db.write(
            lambda conn: conn.execute(
                "UPDATE leases SET expires_at = 0 WHERE session_id = ? AND owner = ? AND generation = ?",
                (lease.session_id, lease.owner, lease.generation),
            )
        )

    async def sessions_needing_harness(self, limit: int) -> list[str]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT r.id FROM resources r LEFT JOIN leases l ON l.session_id = r.id "
                "LEFT JOIN wakeups w ON w.session_id = r.id "
                "WHERE r.kind = 'session' AND r.archived = 0 "
                "AND (json_extract(r.body, '$.status') IN ('running', 'rescheduling') "
                "     OR w.wake_seq > w.answered_seq) "
                "AND (l.session_id IS NULL OR l.expires_at < ?) ORDER BY r.rowid_ LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def mark_answered(self, lease: Lease, through_seq: int) -> None:
        await self._transaction(
            lambda conn: conn.execute(
                "UPDATE wakeups SET answered_seq = MAX(answered_seq, ?) WHERE session_id = ? "
                "AND EXISTS (SELECT 1 FROM leases WHERE session_id = ? AND owner = ? AND generation = ?)",
                (through_seq, lease.session_id, lease.session_id, lease.owner, lease.generation),
            )
        )

    async def read_chain(self, session_id: str) -> list[ChainLink]:
        rows = await self._read(
            lambda conn: conn.execute(
                "SELECT seq, id, prev_hash, hash, body FROM events WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ).fetchall()
        )
        return [ChainLink(seq, id_, prev, digest, json.loads(body)) for seq, id_, prev, digest, body in rows]

    async def wait_for_append(self, session_id: str, after_seq: int, timeout: float) -> bool:
        # A deleted session's waiters wake with ``gone`` (also those that start waiting later).
        with anyio.move_on_after(timeout):
            while True:
                with self._notifier.watch(session_id) as appended:
                    if await self.last_seq(session_id) > after_seq:
                        return True
                    await appended.wait()
                    if appended.gone:
                        return False
        return False


def _page(rows: list[tuple[int, str]], limit: int) -> Page:
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(items=[json.loads(body) for _, body in rows], next_cursor=rows[-1][0] if more else None)
