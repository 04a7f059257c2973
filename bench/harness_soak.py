"""Harness soak (issue #14): many sessions doing short scripted turns for minutes on end. Turns
per minute and append-to-SSE latency must stay flat as the sessions' logs grow.

    python bench/harness_soak.py                            # 50 sessions, 8 minutes, SQLite
    python bench/harness_soak.py --minutes 3 --with-tool    # each turn also calls a custom tool
    python bench/harness_soak.py --database-url postgresql://postgres@127.0.0.1:5432/soak

A scripted model and a gateway run as real processes on loopback. Each session has a client
loop of its own: it posts a ``user.message``, reads the session's SSE stream until the session
idles with ``end_turn`` (with ``--with-tool``, the model first calls a custom tool and the
client posts its ``user.custom_tool_result``), and starts over. Append-to-SSE is the time from
just before the POST of the ``user.message`` to that same event (matched by the id the POST
returns) arriving on the stream. A turn counts in the minute it ends; a latency in the minute
its POST was sent.

Criterion: last minute / first minute within 1.2x for turns per minute (not below 1/1.2) and
for append-to-SSE p50 and p99 (not above 1.2). The table also shows, from the ``processed_at``
times on the stream, the gateway's own time per turn (everything but the model call and the
client's tool result: ``overhead``), the model call, and the CPU the gateway and the model used.
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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
    tool_result,
    user_message,
    verdict,
)

FLAT = 1.2


@dataclass
class Minute:
    turns: list[TurnTimes] = field(default_factory=list)
    message_latency: list[float] = field(default_factory=list)
    result_latency: list[float] = field(default_factory=list)
    events_per_session: float = 0.0
    gateway_cpu: float = 0.0
    model_cpu: float = 0.0


@dataclass
class Soak:
    minutes: int
    began: float
    stop_at: float
    rows: list[Minute] = field(init=False)
    events: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rows = [Minute() for _ in range(self.minutes)]

    def minute(self, moment: float) -> Minute | None:
        index = int((moment - self.began) // 60)
        return self.rows[index] if 0 <= index < self.minutes else None


async def post_events(
    http: httpx2.AsyncClient, session_id: str, events: list[dict[str, object]]
) -> list[str]:
    reply = await http.post(f"/v1/sessions/{session_id}/events", json={"events": events})
    reply.raise_for_status()
    return [str(event["id"]) for event in reply.json()["data"]]


async def drive(http: httpx2.AsyncClient, session_id: str, soak: Soak) -> None:
    """One session's client loop: a turn at a time until the soak's time is up."""
    soak.events[session_id] = 0
    async with SessionStream(http, session_id) as stream:
        while time.perf_counter() < soak.stop_at:
            sent = time.perf_counter()
            (message_id,) = await post_events(http, session_id, [user_message()])
            clock = TurnClock()
            results: list[tuple[str, float]] = []
            times: TurnTimes | None = None
            while times is None:
                arrival = await asyncio.wait_for(stream.queue.get(), 300)
                soak.events[session_id] += 1
                times = clock.add(arrival.body)
                reason = arrival.body.get("stop_reason") or {}
                if arrival.body["type"] == "session.status_idle" and reason["type"] == "requires_action":
                    answered = time.perf_counter()
                    answers = [tool_result(use_id) for use_id in reason["event_ids"]]
                    ids = await post_events(http, session_id, answers)
                    results += [(event_id, answered) for event_id in ids]
            ended = time.perf_counter()
            row = soak.minute(ended)
            if row is not None:
                row.turns.append(times)
            row = soak.minute(sent)
            if row is not None:
                row.message_latency.append(stream.arrived.pop(message_id) - sent)
                row.result_latency += [stream.arrived.pop(i) - at for i, at in results]
            stream.arrived.clear()


async def sample_minutes(soak: Soak, stack: Stack) -> None:
    """At each minute's end: log length per session, and the CPU each process used in it."""
    gateway_pid, model_pid = stack.gateway.process.pid, stack.model.process.pid
    gateway_before, model_before = cpu_seconds(gateway_pid), cpu_seconds(model_pid)
    for index in range(soak.minutes):
        await asyncio.sleep(max(0.0, soak.began + 60 * (index + 1) - time.perf_counter()))
        gateway_now, model_now = cpu_seconds(gateway_pid), cpu_seconds(model_pid)
        row = soak.rows[index]
        row.events_per_session = sum(soak.events.values()) / max(1, len(soak.events))
        row.gateway_cpu, row.model_cpu = gateway_now - gateway_before, model_now - model_before
        gateway_before, model_before = gateway_now, model_now


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def report(soak: Soak, args: argparse.Namespace, stack: Stack) -> bool:
    print(
        f"\nharness soak: {args.sessions} sessions, {args.minutes} min, {stack.database}, "
        f"{'custom tool call + text' if args.with_tool else 'text reply'} per turn, "
        f"prompt caching {'on' if args.prompt_caching == 'on' else 'off'}"
    )
    header = (
        f"{'min':>3} {'turns':>6} {'ev/sess':>7} {'SSE p50':>8} {'SSE p99':>8} "
        f"{'ovh p50':>8} {'ovh p99':>8} {'model p50':>9} {'gw CPU':>6} {'gw ms/turn':>10} {'model CPU':>9}"
    )
    if args.with_tool:
        header += f" {'result p50':>10} {'result p99':>10}"
    print("(latencies in ms; SSE = append-to-SSE of the user.message; ovh = the gateway's own time per")
    print(" turn from the log's processed_at, model and client time taken out; CPU in % of one core)")
    print(header)
    for index, row in enumerate(soak.rows, start=1):
        overheads = [t.overhead for t in row.turns]
        per_turn = row.gateway_cpu / len(row.turns) * 1000 if row.turns else float("nan")
        line = (
            f"{index:>3} {len(row.turns):>6} {row.events_per_session:>7.0f} "
            f"{ms(median(row.message_latency))} {ms(percentile(row.message_latency, 0.99))} "
            f"{ms(median(overheads))} {ms(percentile(overheads, 0.99))} "
            f"{ms(median([t.model for t in row.turns])):>9} {row.gateway_cpu / 60 * 100:>5.0f}% "
            f"{per_turn:>10.1f} {row.model_cpu / 60 * 100:>8.0f}%"
        )
        if args.with_tool:
            line += f" {ms(median(row.result_latency)):>10} {ms(percentile(row.result_latency, 0.99)):>10}"
        print(line)
    first, last = soak.rows[0], soak.rows[-1]
    turns = len(last.turns) / max(1, len(first.turns))
    p50 = median(last.message_latency) / median(first.message_latency)
    p99 = percentile(last.message_latency, 0.99) / percentile(first.message_latency, 0.99)
    checks = [
        ("turns per minute", turns, turns >= 1 / FLAT, f">= {1 / FLAT:.2f}"),
        ("append-to-SSE p50", p50, p50 <= FLAT, f"<= {FLAT:.2f}"),
        ("append-to-SSE p99", p99, p99 <= FLAT, f"<= {FLAT:.2f}"),
    ]
    print(f"\nlast minute / first minute (criterion: flat within {FLAT}x)")
    for name, ratio, ok, bound in checks:
        print(f"  {name:<20} {ratio:6.2f}x  (needs {bound})  {verdict(ok)}")
    if soak.errors:
        print(f"\n{len(soak.errors)} session loops failed; first: {soak.errors[0]}")
    return all(ok for _, _, ok, _ in checks) and not soak.errors


async def soak_run(args: argparse.Namespace, stack: Stack) -> bool:
    marker = add_script(stack.model.url, args.with_tool)
    limits = httpx2.Limits(
        max_connections=2 * args.sessions + 10, max_keepalive_connections=2 * args.sessions
    )
    async with httpx2.AsyncClient(
        base_url=stack.gateway.url, headers=stack.headers, timeout=120, limits=limits
    ) as http:
        agent_id = await create_agent(http, marker, args.with_tool)
        sessions = await create_sessions(http, agent_id, args.sessions)
        began = time.perf_counter()
        soak = Soak(args.minutes, began, began + 60 * args.minutes)

        async def guarded(session_id: str) -> None:
            try:
                await drive(http, session_id, soak)
            except Exception as exc:
                soak.errors.append(f"{session_id}: {type(exc).__name__}: {exc}")

        cleaner = asyncio.create_task(clear_model_requests(stack.model.url, 10))
        sampler = asyncio.create_task(sample_minutes(soak, stack))
        print(f"driving {args.sessions} sessions for {args.minutes} min; {load_average()}", flush=True)
        await asyncio.gather(*(guarded(s) for s in sessions))
        await sampler
        cleaner.cancel()
        threads = thread_cpu(stack.gateway.process.pid)
    ok = report(soak, args, stack)
    print(f"\nafter the run: {load_average()}")
    print("gateway CPU by thread: " + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(threads.items())))
    return ok


def print_profile(path: Path, top: int) -> None:
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    print(f"\ngateway profile (event loop thread, cProfile): top {top} by own time")
    stats.sort_stats("tottime").print_stats(top)
    print(f"top {top} by cumulative time")
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--with-tool", action="store_true", help="one custom tool call per turn")
    parser.add_argument("--database-url", default=None, help="postgresql://... (default: SQLite)")
    parser.add_argument("--prompt-caching", choices=("on", "off"), default="on")
    parser.add_argument("--profile", type=Path, default=None, help="run the gateway under cProfile")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-soak-") as scratch:
        workdir = Path(scratch)
        with running_stack(workdir, args.database_url, args.prompt_caching == "on", args.profile) as stack:
            ok = asyncio.run(soak_run(args, stack))
    if args.profile is not None:
        print_profile(args.profile, 30)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
