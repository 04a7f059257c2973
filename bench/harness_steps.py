"""Harness steps (issue #14): the gateway's overhead per step as one session grows to 5,000
events, and append-to-SSE latency at 100 concurrent sessions, beside a raw SQLite baseline.

    python bench/harness_steps.py                         # 5,000 events; 100 sessions x 20 messages
    python bench/harness_steps.py --events 1500 --messages 5
    python bench/harness_steps.py --profile /tmp/gw.prof  # the gateway under cProfile

(a) One session is driven with short turns (``user.message``, the scripted model's one-line
reply, ``session.status_idle``) until its log holds ``--events`` events. The overhead per step
is read from the log itself (``processed_at`` is assigned at commit and strictly increasing):
``user.message`` to ``span.model_request_start`` (waking, leasing, reading the log, building
the request) plus ``span.model_request_end`` to ``session.status_idle`` (recording the reply,
usage, idling). The medians of the 25 turns nearest events 100, 1,000, 2,500 and 5,000 are
printed; the criterion is overhead at 5,000 / at 100 within 2x.

(b) 100 sessions at once, each a client loop posting a ``user.message`` and waiting for the
turn to end before the next; append-to-SSE is the time from just before the POST to that event
(matched by id) arriving on the session's SSE stream. Every client event wakes the harness
(``WAKES_HARNESS``), so no event measures the log alone; a ``user.message`` with a trivial
reply is what a real client sends, and its append competes with the harness's own appends as
it would in production. Three rows: turns back to back (the criterion: p99 <= 20 ms on
SQLite; this saturates the gateway, so it measures the append path under full load); the same
with ``--think`` seconds between a session's turns (a gateway with headroom); and
``user.interrupt`` on idle sessions back to back (the harness wakes, finds nothing to do and
appends nothing: the append path with the least harness work, as ``bench/session_log.py``
measures it). The baseline is plain ``sqlite3`` in the same run: one commit per event (WAL,
``synchronous=NORMAL`` as the store uses), on the same disk, its per-commit p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gateway import (
    SessionStream,
    Stack,
    TurnClock,
    TurnTimes,
    add_script,
    clear_model_requests,
    cpu_seconds,
    create_agent,
    create_sessions,
    load_average,
    median,
    percentile,
    running_stack,
    thread_cpu,
    user_message,
    verdict,
)
from harness_soak import print_profile

STEP_RATIO = 2.0
P99_LIMIT_MS = 20.0
WINDOW_TURNS = 25
CENTERS = (100, 1000, 2500, 5000)
CLOSED_LOOP = "user.message, turns back to back (criterion)"


# (a) one long session -------------------------------------------------------------------


@dataclass
class Step:
    times: TurnTimes
    wall: float
    """The client's view of the turn: POST to ``session.status_idle`` on the stream."""
    gateway_cpu: float
    """CPU the gateway process used during the turn (in clock ticks: averaged over a window)."""


async def long_session(http: httpx2.AsyncClient, stack: Stack, agent_id: str, events: int) -> list[Step]:
    (session_id,) = await create_sessions(http, agent_id, 1)
    walls: list[tuple[float, float]] = []
    pid = stack.gateway.process.pid
    seen = 0
    async with SessionStream(http, session_id) as stream:
        while seen < events:
            cpu, began = cpu_seconds(pid), time.perf_counter()
            reply = await http.post(f"/v1/sessions/{session_id}/events", json={"events": [user_message()]})
            reply.raise_for_status()
            while True:
                arrival = await stream.until("session.status_idle")
                if arrival.body["stop_reason"]["type"] == "end_turn":
                    break
            walls.append((arrival.at - began, cpu_seconds(pid) - cpu))
            seen = len(stream.arrived)
            if len(walls) % 50 == 0:
                print(f"  {seen} events", flush=True)
                await http.delete(f"{stack.model.url}/_requests")
    log = await read_log(http, session_id)
    turns: list[TurnTimes] = []
    clock = TurnClock()
    for seq, body in enumerate(log, start=1):
        finished = clock.add(body, seq)
        if finished is not None:
            turns.append(finished)
            clock = TurnClock()
    return [Step(t, wall, cpu) for t, (wall, cpu) in zip(turns, walls, strict=True)]


async def read_log(http: httpx2.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    page: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"page": page} if page else {})}
        reply = await http.get(f"/v1/sessions/{session_id}/events", params=params)
        reply.raise_for_status()
        events += reply.json()["data"]
        page = reply.json()["next_page"]
        if page is None:
            return events


def window(steps: list[Step], center: int) -> list[Step]:
    return sorted(steps, key=lambda step: abs(step.times.seq - center))[:WINDOW_TURNS]


def report_steps(steps: list[Step], events: int) -> tuple[float, bool]:
    centers = [c for c in CENTERS if c < events] + [events]
    print(
        f"\n(a) one session to {events} events: medians of the {WINDOW_TURNS} turns nearest each point (ms)"
    )
    print("    overhead = message->model_request_start + model_request_end->idle, from processed_at")
    print(
        f"{'events':>7} {'to model':>9} {'after model':>11} {'overhead':>9} {'model call':>10} "
        f"{'client turn':>11} {'gw CPU/turn':>11}"
    )
    print("    (client turn: POST to idle on the stream; gw CPU/turn: the gateway's CPU time, a mean)")
    overheads = {}
    for center in centers:
        near = window(steps, center)
        overheads[center] = median([s.times.before_model + s.times.after_model for s in near])
        print(
            f"{center:>7} {median([s.times.before_model for s in near]) * 1000:>9.1f} "
            f"{median([s.times.after_model for s in near]) * 1000:>11.1f} {overheads[center] * 1000:>9.1f} "
            f"{median([s.times.model for s in near]) * 1000:>10.1f} {median([s.wall for s in near]) * 1000:>11.1f} "
            f"{sum(s.gateway_cpu for s in near) / len(near) * 1000:>11.1f}"
        )
    ratio = overheads[centers[-1]] / overheads[centers[0]]
    ok = ratio <= STEP_RATIO
    print(
        f"  overhead at {centers[-1]} / at {centers[0]}: {ratio:.2f}x  (needs <= {STEP_RATIO:.0f}x)  {verdict(ok)}"
    )
    return ratio, ok


# (b) append-to-SSE at 100 sessions ------------------------------------------------------


@dataclass
class Phase:
    latencies: list[float]
    gateway_cpu: float
    """The gateway's CPU use during the phase, in % of one core."""


async def concurrent_latency(
    http: httpx2.AsyncClient, stack: Stack, agent_id: str, args: argparse.Namespace, kind: str, think: float
) -> Phase:
    """``args.sessions`` sessions, each posting ``args.messages`` events of ``kind``, one at a
    time; ``think`` seconds between them (starts spread over one ``think``)."""
    created = await create_sessions(http, agent_id, args.sessions)
    latencies: list[float] = []

    async def one(session_id: str) -> None:
        async with SessionStream(http, session_id) as stream:
            await asyncio.sleep(random.uniform(0, think))
            for _ in range(args.messages):
                event = user_message() if kind == "user.message" else {"type": "user.interrupt"}
                sent = time.perf_counter()
                reply = await http.post(f"/v1/sessions/{session_id}/events", json={"events": [event]})
                reply.raise_for_status()
                event_id = reply.json()["data"][0]["id"]
                if kind == "user.message":
                    while (await stream.until("session.status_idle")).body["stop_reason"][
                        "type"
                    ] != "end_turn":
                        pass
                else:
                    while (await stream.until(kind)).body["id"] != event_id:
                        pass
                latencies.append(stream.arrived.pop(event_id) - sent)
                await asyncio.sleep(think)

    pid = stack.gateway.process.pid
    cpu, began = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(*(one(s) for s in created))
    return Phase(latencies, (cpu_seconds(pid) - cpu) / (time.perf_counter() - began) * 100)


def raw_sqlite(directory: Path, commits: int) -> list[float]:
    """Per-commit latency of a plain ``sqlite3`` insert loop, one event per transaction."""
    conn = sqlite3.connect(directory / f"raw-{secrets.token_hex(3)}.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE events (session_id TEXT NOT NULL, seq INTEGER NOT NULL, id TEXT NOT NULL UNIQUE, "
        "type TEXT NOT NULL, processed_at TEXT NOT NULL, body TEXT NOT NULL, prev_hash TEXT NOT NULL, "
        "hash TEXT NOT NULL, PRIMARY KEY (session_id, seq)) WITHOUT ROWID"
    )
    body = json.dumps(user_message())
    latencies = []
    for seq in range(1, commits + 1):
        began = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "sesn_raw",
                seq,
                f"sevt_{seq}",
                "user.message",
                "2026-01-01T00:00:00Z",
                body,
                "0" * 64,
                "1" * 64,
            ),
        )
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - began)
    conn.close()
    return latencies


def report_latency(rows: dict[str, Phase], raw: list[float], sessions: int, database: str) -> bool:
    print(f"\n(b) append-to-SSE at {sessions} concurrent sessions on {database} (ms)")
    print(f"{'':<48} {'p50':>8} {'p99':>8} {'n':>6} {'gw CPU':>7}")
    for name, phase in rows.items():
        p50, p99 = median(phase.latencies) * 1000, percentile(phase.latencies, 0.99) * 1000
        print(f"{name:<48} {p50:>8.2f} {p99:>8.2f} {len(phase.latencies):>6} {phase.gateway_cpu:>6.0f}%")
    print(
        f"{'baseline: raw sqlite3 commit (WAL, NORMAL)':<48} {median(raw) * 1000:>8.3f} "
        f"{percentile(raw, 0.99) * 1000:>8.3f} {len(raw):>6}"
    )
    message = rows[CLOSED_LOOP].latencies
    p99 = percentile(message, 0.99) * 1000
    print(
        f"  gateway / raw commit: p50 {median(message) / median(raw):.0f}x, "
        f"p99 {percentile(message, 0.99) / percentile(raw, 0.99):.0f}x"
    )
    ok = p99 <= P99_LIMIT_MS
    print(f"  user.message append-to-SSE p99 {p99:.1f} ms  (needs <= {P99_LIMIT_MS:.0f} ms)  {verdict(ok)}")
    return ok


async def run(args: argparse.Namespace, stack: Stack, workdir: Path) -> bool:
    marker = add_script(stack.model.url, with_tool=False)
    limits = httpx2.Limits(
        max_connections=2 * args.sessions + 10, max_keepalive_connections=2 * args.sessions
    )
    async with httpx2.AsyncClient(
        base_url=stack.gateway.url, headers=stack.headers, timeout=120, limits=limits
    ) as http:
        agent_id = await create_agent(http, marker, with_tool=False)
        print(f"(a) driving one session to {args.events} events; {load_average()}", flush=True)
        steps = await long_session(http, stack, agent_id, args.events)
        cleaner = asyncio.create_task(clear_model_requests(stack.model.url, 10))
        print(f"(b) {args.sessions} sessions x {args.messages} events each; {load_average()}", flush=True)
        rows = {
            CLOSED_LOOP: await concurrent_latency(http, stack, agent_id, args, "user.message", 0),
            f"user.message, {args.think:g} s between turns": await concurrent_latency(
                http, stack, agent_id, args, "user.message", args.think
            ),
            "user.interrupt on idle sessions, back to back": await concurrent_latency(
                http, stack, agent_id, args, "user.interrupt", 0
            ),
        }
        cleaner.cancel()
        threads = thread_cpu(stack.gateway.process.pid)
    raw = raw_sqlite(workdir, args.raw_commits)
    _, steps_ok = report_steps(steps, args.events)
    latency_ok = report_latency(rows, raw, args.sessions, stack.database)
    print(f"\nafter the run: {load_average()}")
    print("gateway CPU by thread: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(threads.items())))
    return steps_ok and latency_ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5000, help="(a): the long session's length")
    parser.add_argument("--sessions", type=int, default=100, help="(b): concurrent sessions")
    parser.add_argument("--messages", type=int, default=20, help="(b): events posted per session")
    parser.add_argument("--think", type=float, default=3.0, help="(b): pause between turns, paced row")
    parser.add_argument("--raw-commits", type=int, default=2000, help="baseline: commits timed")
    parser.add_argument("--database-url", default=None, help="postgresql://... (default: SQLite)")
    parser.add_argument("--prompt-caching", choices=("on", "off"), default="on")
    parser.add_argument("--profile", type=Path, default=None, help="run the gateway under cProfile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-steps-") as scratch:
        workdir = Path(scratch)
        with running_stack(workdir, args.database_url, args.prompt_caching == "on", args.profile) as stack:
            ok = asyncio.run(run(args, stack, workdir))
    if args.profile is not None:
        print_profile(args.profile, 30)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
