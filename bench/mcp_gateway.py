"""MCP gateway overhead: tool calls through ``/mcp/{name}`` (and through a tunnel) vs. the
same calls made directly, one at a time and from 20 concurrent clients.

Run: ``python bench/mcp_gateway.py`` (``--calls N`` latency samples per path, ``--seconds S``
per throughput run, ``--clients C``, ``--procs P``).

Starts (``bench/_mcp_tunnel.py``), as real processes on loopback: two upstream MCP servers
(streamable HTTP), ``dual`` serving both protocol eras and ``session`` serving only the
session-based 2025-11-25 one; a gateway (``tether gateway``, the app as shipped, with the
tunnel hub wired into its MCP gateway); and a tunnel agent (``tether tunnel``) dialing the
gateway with a route to each upstream. The gateway has each upstream registered twice, by
its loopback URL and by its tunnel URL ``http://<sub>.<domain>/mcp``, plus a stdio server.

Latency: ``add`` (``shout`` for stdio) calls, one at a time, each path in its own client
session opened up front; the paths take turns in blocks of calls (so a drift in the
machine's load weighs on all of them alike), after a warm-up. Median and p95 of:

* ``direct``: the SDK client (2026-07-28) straight to ``dual`` (the baseline);
* ``gateway``: the same call through the gateway, 2026-07-28 client (auth, rate limit,
  policy, vault lookup, breaker, audit record, upstream call);
* ``legacy``: through the gateway with a 2025-11-25 session;
* ``tunnel``: through the gateway to ``dual``'s tunnel URL (gateway -> agent WebSocket ->
  agent -> upstream), 2026-07-28 client;
* ``sess-direct``: a 2025-11-25 session straight to ``session`` (its baseline);
* ``sess-gw`` / ``sess-tunnel``: a 2026-07-28 client through the gateway to ``session``,
  by its loopback URL / through the tunnel;
* ``stdio-direct`` / ``stdio-gw``: the stdio server spawned by the client vs. reached
  through the gateway's supervised process.

Throughput: C = 20 clients, each its own MCP client session (and its own HTTP
connection), call ``add`` back to back for S = 5 s after 1 s of warm-up under the same
load; calls/s direct, through the gateway and through the tunnel, for each upstream. The
clients run in P worker processes (this file with ``--load-worker``), started once and
reused for every run. P = 2 by default: the MCP client costs more CPU per call than the
upstream (about 2 ms vs 1.4 ms here), so on 2 cores one process of 20 clients runs at a
full core in the direct runs and is itself their bottleneck, which would hide the
gateway's cost; with two, the direct runs use both cores. Client, gateway, agent and
upstream all share the machine's cores, so the ratio is what counts. Each throughput run
also prints the CPU milliseconds per call of every process (from ``/proc``: where the
gateway's cost goes) and how many cores anything else kept busy meanwhile (another
process's load makes that run's figures unreliable).

Rows: each latency path against its baseline (median; p95 shown beside it), goal
``<= 1.3x`` through the gateway and ``<= 1.6x`` through the tunnel; calls/s through the
gateway against direct, goal ``>= 0.8x`` (the tunnel's throughput is shown for context).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._mcp_tunnel import BenchStack, running_stack  # noqa: E402
from bench._table import Row, render  # noqa: E402
from tests.support.mcp_gateway_stack import STDIO_SERVER  # noqa: E402

WARMUP = 5
BLOCK = 25
"""Latency calls per path per turn."""
CLIENTS = 20
PROCS = 2
SECONDS = 5.0
LOAD_WARMUP = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GATEWAY_ENV = {"TETHER_MCP_RATE_PER_MINUTE": "1000000", "TETHER_MCP_RATE_BURST": "100000"}
"""No rate limit gets in the way of the throughput runs."""

ADD: tuple[str, dict[str, Any]] = ("add", {"a": 1, "b": 2})
SHOUT: tuple[str, dict[str, Any]] = ("shout", {"text": "x"})


@dataclass(frozen=True)
class Target:
    """Where a client connects: ``url`` None means the stdio server, spawned by the client."""

    url: str | None
    headers: dict[str, str]
    mode: str
    tool: tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Load:
    rate: float
    """Calls per second."""
    cpu_ms: dict[str, float]
    """CPU milliseconds per call, by process (``clients``: the load workers together)."""
    others: float
    """Cores busy meanwhile with anything else (other processes, the kernel's own work)."""


@dataclass
class Results:
    latency: dict[str, list[float]]
    """Seconds per call, by path."""
    throughput: dict[str, Load]
    """At ``clients`` concurrent clients, by path."""
    clients: int
    procs: int
    seconds: float


LATENCY_ROWS = (
    ("gateway", "direct", "MCP call via /mcp/{name}, 2026-07-28 client", "<= 1.3x", 1.3),
    ("legacy", "direct", "MCP call via /mcp/{name}, 2025-11-25 session", "<= 1.3x", 1.3),
    ("sess-gw", "sess-direct", "MCP call via /mcp/{name} to a session-based upstream", "<= 1.3x", 1.3),
    ("tunnel", "direct", "MCP call via /mcp/{name} through a tunnel", "<= 1.6x", 1.6),
    (
        "sess-tunnel",
        "sess-direct",
        "MCP call via /mcp/{name} through a tunnel to a session-based upstream",
        "<= 1.6x",
        1.6,
    ),
    ("stdio-gw", "stdio-direct", "MCP call via the gateway to a stdio server", "<= 1.3x", 1.3),
)
THROUGHPUT_ROWS = (
    ("gateway", "direct", "MCP calls/s via /mcp/{name}, {n} clients", ">= 0.8x"),
    ("sess-gw", "sess-direct", "MCP calls/s via /mcp/{name}, {n} clients, session-based upstream", ">= 0.8x"),
    ("tunnel", "direct", "MCP calls/s via /mcp/{name} through a tunnel, {n} clients", ""),
    (
        "sess-tunnel",
        "sess-direct",
        "MCP calls/s via /mcp/{name} through a tunnel, {n} clients, session-based upstream",
        "",
    ),
)


def targets(stack: BenchStack) -> dict[str, Target]:
    key = stack.headers
    return {
        "direct": Target(stack.dual.mcp_url, {}, "auto", ADD),
        "gateway": Target(stack.mcp_url("dual"), key, "auto", ADD),
        "legacy": Target(stack.mcp_url("dual"), key, "legacy", ADD),
        "tunnel": Target(stack.mcp_url("dual-tunnel"), key, "auto", ADD),
        "sess-direct": Target(stack.session.mcp_url, {}, "legacy", ADD),
        "sess-gw": Target(stack.mcp_url("session"), key, "auto", ADD),
        "sess-tunnel": Target(stack.mcp_url("session-tunnel"), key, "auto", ADD),
        "stdio-direct": Target(None, {}, "auto", SHOUT),
        "stdio-gw": Target(stack.mcp_url("dual"), key, "auto", SHOUT),
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(name: str, samples: list[float]) -> str:
    median, p95 = statistics.median(samples), percentile(samples, 0.95)
    return f"{name:<13} n={len(samples):<4} median {median * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms"


@asynccontextmanager
async def _client(target: Target) -> AsyncIterator[Client]:
    if target.url is None:
        async with Client(StdioServerParameters(command=sys.executable, args=[STDIO_SERVER])) as client:
            yield client
        return
    async with (
        httpx2.AsyncClient(headers=target.headers, timeout=30) as http,
        Client(streamable_http_client(target.url, http_client=http), mode=target.mode) as client,
    ):
        yield client


async def _call(client: Client, target: Target) -> None:
    result = await client.call_tool(*target.tool)
    if result.is_error:
        raise RuntimeError(f"{target.url}: {result}")


async def _latency(paths: dict[str, Target], calls: int) -> dict[str, list[float]]:
    """Every path's session open at once; the paths take turns, ``BLOCK`` calls at a time."""
    samples: dict[str, list[float]] = {name: [] for name in paths}
    async with AsyncExitStack() as stack:
        clients = {name: await stack.enter_async_context(_client(target)) for name, target in paths.items()}
        for name, client in clients.items():
            for _ in range(WARMUP):
                await _call(client, paths[name])
        while any(len(taken) < calls for taken in samples.values()):
            for name, client in clients.items():
                for _ in range(min(BLOCK, calls - len(samples[name]))):
                    started = time.perf_counter()
                    await _call(client, paths[name])
                    samples[name].append(time.perf_counter() - started)
    return samples


# Throughput: worker processes, each running its share of the clients.


async def _load(target: Target, clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Connect ``clients`` sessions, say ``ready``, wait for ``go`` on stdin, then count the
    calls that complete in [go + warmup, go + warmup + seconds] (``calls``), and all calls
    made from ``go`` on (``total``) with this process's CPU seconds over them (``cpu``)."""
    async with AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(_client(target)) for _ in range(clients)]
        for session in sessions:
            await _call(session, target)
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        cpu = time.process_time()
        begin = time.perf_counter() + warmup
        end = begin + seconds
        counts = [0] * clients
        totals = [0] * clients

        async def run(index: int) -> None:
            while True:
                await _call(sessions[index], target)
                totals[index] += 1
                now = time.perf_counter()
                if now > end:
                    return
                if now >= begin:
                    counts[index] += 1

        async with anyio.create_task_group() as group:
            for index in range(clients):
                group.start_soon(run, index)
        cpu = time.process_time() - cpu
    return {"calls": sum(counts), "total": sum(totals), "cpu": cpu}


def load_worker() -> None:
    """``--load-worker``: one JSON spec a line on stdin, until EOF; answers on stdout."""
    for line in sys.stdin:
        spec = json.loads(line)
        target = Target(spec["url"], spec["headers"], spec["mode"], ADD)
        result = asyncio.run(_load(target, spec["clients"], spec["warmup"], spec["seconds"]))
        print(json.dumps(result), flush=True)


class LoadWorkers:
    """``procs`` worker processes, killed on the way out whatever happened."""

    def __init__(self, procs: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for _ in range(procs):
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "--load-worker"],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
        except BaseException:
            self.kill()
            raise

    def _read(self, proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load worker {proc.pid} exited ({proc.wait()})")
        return line.strip()

    def _write(self, proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()

    def rate(
        self, target: Target, clients: int, warmup: float, seconds: float, watch: dict[str, int]
    ) -> Load:
        """``clients`` sessions to ``target``, spread over the workers; ``watch`` names the
        server processes whose CPU time per call to report beside the clients'."""
        procs = len(self.procs)
        shares = [clients // procs + (i < clients % procs) for i in range(procs)]
        busy = [(proc, share) for proc, share in zip(self.procs, shares, strict=True) if share]
        for proc, share in busy:
            spec = {
                "url": target.url,
                "headers": target.headers,
                "mode": target.mode,
                "clients": share,
                "warmup": warmup,
                "seconds": seconds,
            }
            self._write(proc, json.dumps(spec))
        for proc, _ in busy:
            if self._read(proc) != "ready":
                raise RuntimeError(f"load worker {proc.pid} did not get ready")
        before = {name: _cpu_seconds(pid) for name, pid in watch.items()}
        machine, started = _machine_busy_seconds(), time.perf_counter()
        for proc, _ in busy:
            self._write(proc, "go")
        answers = [json.loads(self._read(proc)) for proc, _ in busy]
        wall = time.perf_counter() - started
        machine = _machine_busy_seconds() - machine
        total = sum(answer["total"] for answer in answers)
        cpu = {name: _cpu_seconds(pid) - before[name] for name, pid in watch.items()}
        cpu["clients"] = sum(answer["cpu"] for answer in answers)
        return Load(
            sum(answer["calls"] for answer in answers) / seconds,
            {name: spent * 1000 / total for name, spent in cpu.items()},
            max(0.0, machine - sum(cpu.values())) / wall,
        )

    def close(self) -> None:
        """End of input: each worker finishes and exits (killed if it does not)."""
        for proc in self.procs:
            if proc.stdin is not None and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _machine_busy_seconds() -> float:
    """CPU seconds all cores have spent on anything but idling, so far (``/proc/stat``)."""
    fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / CLOCK_TICKS  # guest time is already in user time


def _throughput(
    paths: dict[str, Target], clients: int, procs: int, seconds: float, watch: dict[str, int]
) -> dict[str, Load]:
    workers = LoadWorkers(procs)
    try:
        loads = {
            name: workers.rate(target, clients, LOAD_WARMUP, seconds, watch) for name, target in paths.items()
        }
    except BaseException:
        workers.kill()
        raise
    workers.close()
    return loads


THROUGHPUT_PATHS = ("direct", "gateway", "tunnel", "sess-direct", "sess-gw", "sess-tunnel")


def measure(
    calls: int = 200,
    seconds: float = SECONDS,
    clients: int = CLIENTS,
    procs: int = PROCS,
    throughput: bool = True,
) -> Results:
    """Latency samples for every path and calls/s at ``clients`` concurrent clients, all
    measured in this run; every process started is stopped before this returns."""
    with tempfile.TemporaryDirectory() as workdir, running_stack(Path(workdir), GATEWAY_ENV) as stack:
        paths = targets(stack)
        latency = asyncio.run(_latency(paths, calls))
        loads: dict[str, Load] = {}
        if throughput:
            servers = (stack.gateway, stack.agent, stack.dual, stack.session)
            watch = dict(
                zip(("gateway", "agent", "dual", "session"), (s.process.pid for s in servers), strict=True)
            )
            loads = _throughput(
                {name: paths[name] for name in THROUGHPUT_PATHS}, clients, procs, seconds, watch
            )
    return Results(latency, loads, clients, procs, seconds)


def _ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f} ms (p95 {percentile(samples, 0.95) * 1000:.1f})"


def rows(results: Results) -> list[Row]:
    """Issue #16's goals: through the gateway <= 1.3x the direct call's median latency,
    through the tunnel <= 1.6x, and >= 0.8x the direct calls/s at 20 concurrent clients."""
    out = []
    latency = results.latency
    for name, base, label, goal, limit in LATENCY_ROWS:
        ratio = statistics.median(latency[name]) / statistics.median(latency[base])
        out.append(
            Row(label, _ms(latency[name]), _ms(latency[base]) + " direct", ratio, goal, ratio <= limit)
        )
    rates = {name: load.rate for name, load in results.throughput.items()}
    for name, base, label, goal in THROUGHPUT_ROWS:
        if name not in rates:
            continue
        ratio = rates[name] / rates[base]
        out.append(
            Row(
                label.replace("{n}", str(results.clients)),
                f"{rates[name]:,.0f} calls/s",
                f"{rates[base]:,.0f} calls/s direct",
                ratio,
                goal,
                ratio >= 0.8 if goal else None,
            )
        )
    return out


def main() -> None:
    if sys.argv[1:] == ["--load-worker"]:
        load_worker()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="latency samples per path")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="length of each throughput run")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")
    parser.add_argument("--procs", type=int, default=PROCS, help="worker processes the clients run in")
    args = parser.parse_args()
    started = time.perf_counter()
    results = measure(args.calls, args.seconds, args.clients, args.procs)
    print(f"latency, {args.calls} calls per path after {WARMUP} warm-up (one at a time):")
    for name, samples in results.latency.items():
        print("  " + _summary(name, samples))
    print(
        f"throughput, {results.clients} clients in {results.procs} processes, "
        f"{results.seconds:g} s after {LOAD_WARMUP:g} s warm-up:"
    )
    for name, load in results.throughput.items():
        cpu = ", ".join(f"{process} {ms:.2f}" for process, ms in load.cpu_ms.items() if ms >= 0.05)
        cores = load.cpu_ms["clients"] * load.rate / 1000
        print(
            f"  {name:<13} {load.rate:8,.0f} calls/s   CPU ms per call: {cpu} "
            f"(clients: {cores:.2f} cores; anything else: {load.others:.2f} cores)"
        )
    print(render(rows(results)))
    print(f"(bench wall time {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
