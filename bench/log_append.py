"""Durable append throughput against raw commit-per-event loops (issue #17, group commit).

    python bench/log_append.py                      # SQLite, and PostgreSQL at $TETHER_TEST_PG_DSN
    python bench/log_append.py --backends sqlite --events 300

Tether appends one event per call through the store (fence-free, as a client POST does),
from 1, 10 and 100 concurrent sessions; every call returns only once its event is committed.
The baselines run in the same process and the same run, on the same disk:

* SQLite: a loop committing one row per transaction on a WAL database with
  ``synchronous=FULL`` (the store's own settings: a commit is on disk when it returns);
* PostgreSQL: a loop of single-row ``INSERT`` statements in autocommit on one asyncpg
  connection (one round trip and one commit each).

Goals: SQLite >= 1.5x raw at concurrency (group commit shares one fsync among sessions);
PostgreSQL >= 1.0x raw for one session and >= 3x raw at 100 sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._table import Row, as_json, render
from bench.session_log import CONCURRENCY, append_throughput, fresh_database
from gateway import ids

GOALS = {("sqlite", 1): None, ("sqlite", 10): 1.5, ("sqlite", 100): 1.5}
GOALS |= {("postgres", 1): 1.0, ("postgres", 10): None, ("postgres", 100): 3.0}
BODY = {"type": "agent.thinking"}


def _row(seq: int) -> tuple[str, int, str, str, str, str]:
    event_id = ids.new_id(ids.EVENT)
    body = json.dumps({**BODY, "id": event_id, "processed_at": ids.timestamp()})
    return ("sesn_raw", seq, event_id, BODY["type"], ids.timestamp(), body)


def raw_sqlite(path: Path, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE events (session_id TEXT, seq INTEGER, id TEXT, type TEXT, processed_at TEXT, "
        "body TEXT, PRIMARY KEY (session_id, seq))"
    )
    began = time.perf_counter()
    for seq in range(1, count + 1):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", _row(seq))
        conn.execute("COMMIT")
    rate = count / (time.perf_counter() - began)
    conn.close()
    return rate


async def raw_postgres(url: str, count: int) -> float:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "CREATE TABLE raw_events (session_id text, seq bigint, id text, type text, "
            "processed_at text, body jsonb, PRIMARY KEY (session_id, seq))"
        )
        began = time.perf_counter()
        for seq in range(1, count + 1):
            await conn.execute("INSERT INTO raw_events VALUES ($1, $2, $3, $4, $5, $6::jsonb)", *_row(seq))
        return count / (time.perf_counter() - began)
    finally:
        await conn.close()


async def measure(events: int = 200, backends: Sequence[str] = ("sqlite", "postgres")) -> list[Row]:
    """Tether vs the raw loop per backend and concurrency, measured in this run."""
    workdir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    rows = []
    for backend in backends:
        url, drop = await fresh_database(backend, workdir)
        try:
            if backend == "sqlite":
                raw = await asyncio.to_thread(raw_sqlite, workdir / "raw.db", 2000)
            else:
                raw = await raw_postgres(url, 2000)
        finally:
            await drop()
        for sessions in CONCURRENCY:
            url, drop = await fresh_database(backend, workdir)
            try:
                rate = await append_throughput(url, sessions, events)
            finally:
                await drop()
            goal = GOALS[backend, sessions]
            rows.append(
                Row(
                    f"durable append, {backend}, {sessions} session{'s' if sessions > 1 else ''}",
                    f"{rate:,.0f} ev/s",
                    f"{raw:,.0f} ev/s raw",
                    rate / raw,
                    "" if goal is None else f">= {goal}x raw",
                    None if goal is None else rate / raw >= goal,
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200, help="events per session")
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.events, args.backends.split(",")))
    print(as_json(rows) if args.json else render(rows))


if __name__ == "__main__":
    main()
