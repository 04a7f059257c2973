"""Session log benchmark: append throughput and append-to-SSE latency, SQLite vs PostgreSQL,
plus the memory of 1,000 idle SSE subscribers on one gateway process.

    python bench/session_log.py                    # SQLite, and PostgreSQL at $TETHER_TEST_PG_DSN (127.0.0.1:5432)
    python bench/session_log.py --events 200 --subscribers 1000

Throughput appends single events (as the harness does) through the store itself, from
1, 10 and 100 concurrent sessions. Latency is end to end through a real gateway: POST an
event, time until it arrives on that session's SSE stream. The baseline is SQLite; the
PostgreSQL figures are printed with their ratio to it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway import ids
from gateway.serving import READY_PREFIX
from gateway.store import open_store

PG_ADMIN = os.environ.get("TETHER_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
CONCURRENCY = (1, 10, 100)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def fresh_database(kind: str, workdir: Path) -> tuple[str, Callable[[], Awaitable[None]]]:
    if kind == "sqlite":
        path = workdir / f"bench-{secrets.token_hex(4)}.db"

        async def nothing() -> None:
            return None

        return f"sqlite:///{path}", nothing
    name = f"tether_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN)
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await conn.close()

    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", drop


async def append_throughput(url: str, sessions: int, events_per_session: int) -> float:
    store = await open_store(url)
    try:

        async def writer(session_id: str) -> None:
            for _ in range(events_per_session):
                body = {
                    "id": ids.new_id(ids.EVENT),
                    "type": "agent.thinking",
                    "processed_at": ids.timestamp(),
                }
                await store.append_events(session_id, [body])

        began = time.perf_counter()
        await asyncio.gather(*(writer(ids.new_id(ids.SESSION)) for _ in range(sessions)))
        return sessions * events_per_session / (time.perf_counter() - began)
    finally:
        await store.close()


def start_gateway(env: dict[str, str], data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "gateway", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(READY_PREFIX):
            return process, line[len(READY_PREFIX) :].strip()
    raise RuntimeError("gateway did not start")


async def sse_latency(base: str, key: str, sessions: int, events_per_session: int) -> list[float]:
    headers = {"x-api-key": key}
    limits = httpx2.Limits(max_connections=2 * sessions + 10)
    async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
        agent = (await http.post("/v1/agents", json={"name": "bench", "model": "bench"})).json()
        env = (await http.post("/v1/environments", json={"name": "bench"})).json()
        latencies: list[float] = []

        async def one(session_id: str) -> None:
            sent: dict[str, float] = {}
            arrived: dict[str, float] = {}
            async with http.stream("GET", f"/v1/sessions/{session_id}/events/stream") as stream:

                async def send_all() -> None:
                    for _ in range(events_per_session):
                        started = time.perf_counter()
                        reply = await http.post(
                            f"/v1/sessions/{session_id}/events", json={"events": [{"type": "user.interrupt"}]}
                        )
                        sent[reply.json()["data"][0]["id"]] = started

                sender = asyncio.create_task(send_all())
                seen = 0
                async for line in stream.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if event["type"] != "user.interrupt":
                        continue
                    arrived[event["id"]] = time.perf_counter()
                    seen += 1
                    if seen == events_per_session:
                        break
                await sender
            latencies.extend(arrived[event_id] - began for event_id, began in sent.items())

        created = [
            (
                await http.post("/v1/sessions", json={"agent": agent["id"], "environment_id": env["id"]})
            ).json()["id"]
            for _ in range(sessions)
        ]
        await asyncio.gather(*(one(s) for s in created))
        return latencies


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def idle_subscribers(base: str, key: str, pid: int, count: int) -> tuple[float, float]:
    limits = httpx2.Limits(max_connections=count + 10)
    async with httpx2.AsyncClient(
        base_url=base, headers={"x-api-key": key}, timeout=120, limits=limits
    ) as http:
        agent = (await http.post("/v1/agents", json={"name": "idle", "model": "m"})).json()
        env = (await http.post("/v1/environments", json={"name": "idle"})).json()
        session = (
            await http.post("/v1/sessions", json={"agent": agent["id"], "environment_id": env["id"]})
        ).json()
        before = rss_mib(pid)
        opened = asyncio.Semaphore(0)
        stop = asyncio.Event()

        async def subscriber() -> None:
            async with http.stream("GET", f"/v1/sessions/{session['id']}/events/stream") as stream:
                assert stream.status_code == 200
                opened.release()
                await stop.wait()

        tasks = [asyncio.create_task(subscriber()) for _ in range(count)]
        for _ in range(count):
            await opened.acquire()
        after = rss_mib(pid)
        stop.set()
        await asyncio.gather(*tasks)
        return before, after


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100, help="events per session for throughput")
    parser.add_argument("--latency-events", type=int, default=20, help="events per session for latency")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    backends = args.backends.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    throughput: dict[tuple[str, int], float] = {}
    latency: dict[tuple[str, int], tuple[float, float]] = {}
    for backend in backends:
        for sessions in CONCURRENCY:
            url, drop = await fresh_database(backend, workdir)
            throughput[backend, sessions] = await append_throughput(url, sessions, args.events)
            await drop()
        url, drop = await fresh_database(backend, workdir)
        key = "bench-" + secrets.token_hex(8)
        process, base = start_gateway(
            {"TETHER_API_KEYS": key, "TETHER_DATABASE_URL": url}, workdir / f"gw-{backend}"
        )
        try:
            for sessions in CONCURRENCY:
                values = await sse_latency(base, key, sessions, args.latency_events)
                latency[backend, sessions] = (percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000)
            if backend == backends[0]:
                before, after = await idle_subscribers(base, key, process.pid, args.subscribers)
                print(
                    f"{args.subscribers} idle SSE subscribers on one gateway ({backend}): RSS {before:.0f} MiB -> "
                    f"{after:.0f} MiB (+{(after - before) * 1024 / args.subscribers:.1f} KiB each)"
                )
        finally:
            process.terminate()
            process.wait()
            await drop()

    print("\nappend throughput (events/s, one event per append)")
    print(
        f"{'sessions':>9} "
        + " ".join(f"{b:>12}" for b in backends)
        + ("   pg/sqlite" if len(backends) == 2 else "")
    )
    for sessions in CONCURRENCY:
        row = [throughput[b, sessions] for b in backends]
        ratio = f"   {row[1] / row[0]:9.2f}x" if len(row) == 2 else ""
        print(f"{sessions:>9} " + " ".join(f"{v:>12.0f}" for v in row) + ratio)
    print("\nappend-to-SSE latency through the gateway (ms, p50 / p99)")
    for sessions in CONCURRENCY:
        cells = [f"{latency[b, sessions][0]:6.1f} / {latency[b, sessions][1]:6.1f}" for b in backends]
        print(f"{sessions:>9} " + "   ".join(f"{b}: {c}" for b, c in zip(backends, cells, strict=True)))
    if len(backends) == 2:
        for sessions in CONCURRENCY:
            p50 = latency[backends[1], sessions][0] / latency[backends[0], sessions][0]
            print(f"  p50 ratio pg/sqlite at {sessions} sessions: {p50:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
