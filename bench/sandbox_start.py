"""Sandbox start and footprint, against the baselines of issue #17.

Run: ``python bench/sandbox_start.py`` (``--starts``/``--calls`` change N; run as root for the
deployment's real path: a workspace filesystem per sandbox, its own uid).

Prints, each with its ratio to the issue's baseline (measured on main d50ebc6, 2 cores):

* ``start cold``: ``SandboxPool.endpoint`` for a new session until its sandbox is ready for the
  first tool call (ready line read), every start a fresh interpreter (``warm_pool=0``);
* ``start warm``: the same with a warm pool of one, each start taking a warm process forked from
  the template, its imports done (the steady state of a pool that keeps up with arrivals);
* ``idle memory``: ten idle sandboxes at once, each having answered one call, forked from the
  template (``TETHER_SANDBOX_ZYGOTE``, the default) or each spawned on its own: median PSS (the
  host memory each costs, shared pages split among their sharers), with RSS and private memory;
* ``bash true``: a ``bash`` call through MCP (streamable HTTP, the sandbox's token) vs raw
  ``bwrap <the server's exact args> true`` (``bench/sandbox_exec.py`` splits it further);
* ``gateway listening``: ``tether gateway`` from spawn to its ready line;
* ``demo``: the wall time of ``tether demo`` (scripted model, local sandbox, SQLite).

``--json`` prints the rows as JSON; ``bench/run.py`` puts them in the project's one table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._table import Row, as_json, render  # noqa: E402
from bench.sandbox_exec import _bench_mcp, _bench_raw  # noqa: E402
from gateway.tools.sandbox import SandboxPool  # noqa: E402
from tests.support.processes import start_server  # noqa: E402

BASELINE = {
    "start": 0.513,  # median, seconds
    "rss": 117.0,  # MB
    "ratio": 2.64,  # bash true: mcp / raw
    "gateway": 7.0,  # seconds, the better end of "7-15 s"
    "demo": 10.0,  # seconds, the better end of "10-11 s"
}
ARGS = ["--egress", "none"]


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def _starts(root: Path, n: int, warm: int) -> tuple[list[float], list[float], float]:
    """Seconds to ready per start, the first ``bash true`` after each, and the last one's RSS."""
    pool = SandboxPool(root, ARGS, warm_pool=warm, zygote=bool(warm))
    pool.warm_up()
    ready, first, rss = [], [], 0.0
    try:
        for i in range(n):
            if warm:
                await pool.warm.wait_for(1)
            session = f"sesn_{'w' if warm else 'c'}{i}"
            started = time.perf_counter()
            endpoint = await pool.endpoint(session)
            ready.append(time.perf_counter() - started)
            first.append(min(await _bench_first(endpoint.url, dict(endpoint.headers))) + ready[-1])
            pid = pool.pid(session)
            assert pid is not None
            rss = _rss_mb(pid)
            await pool.destroy(session)
    finally:
        await pool.close()
    return ready, first, rss


async def _bench_first(url: str, headers: dict[str, str]) -> list[float]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    started = time.perf_counter()
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        result = await client.call_tool("bash", {"command": "true"})
        assert not result.is_error, result.content
    return [time.perf_counter() - started]


def _smaps(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value) / 1024
    return fields


async def _idle_memory(root: Path, count: int, zygote: bool) -> tuple[float, float, float]:
    """Median RSS, PSS and private memory (MB) of ``count`` idle sandboxes running at once, each
    having answered one ``bash true`` (what 200 idle sessions on a host would cost apiece)."""
    pool = SandboxPool(root, ARGS, warm_pool=1, zygote=zygote)
    pool.warm_up()
    sessions = [f"sesn_m{i}" for i in range(count)]
    try:
        for session in sessions:
            await pool.warm.wait_for(1)
            endpoint = await pool.endpoint(session)
            await _bench_first(endpoint.url, dict(endpoint.headers))
        stats = [_smaps(pid) for session in sessions if (pid := pool.pid(session)) is not None]
    finally:
        for session in sessions:
            await pool.destroy(session)
        await pool.close()
    return (
        statistics.median(m["Rss"] for m in stats),
        statistics.median(m["Pss"] for m in stats),
        statistics.median(m["Private_Clean"] + m["Private_Dirty"] for m in stats),
    )


def _bash_true(root: Path, calls: int) -> tuple[float, float]:
    """Median ``bash true`` through MCP and raw bwrap, seconds."""

    async def through_mcp() -> list[float]:
        pool = SandboxPool(root, ARGS)
        try:
            endpoint = await pool.endpoint("sesn_exec")
            return await _bench_mcp(endpoint.url, calls, dict(endpoint.headers))
        finally:
            await pool.destroy("sesn_exec")
            await pool.close()

    mcp = asyncio.run(through_mcp())
    workspace = root / "raw"
    workspace.mkdir()
    raw = _bench_raw(workspace, calls)
    return statistics.median(mcp), statistics.median(raw)


def _gateway_listening(data_dir: Path) -> tuple[float, float]:
    """Wall seconds from spawn to the ready line, and the CPU seconds the gateway spent by then."""
    env = {"TETHER_API_KEYS": "bench", "ANTHROPIC_API_KEY": "", "TETHER_SANDBOX_WARM_POOL": "0"}
    started = time.perf_counter()
    server = start_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env)
    wall = time.perf_counter() - started
    fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    server.stop()
    return wall, cpu


def _demo_wall(data_dir: Path) -> float:
    """Wall seconds of ``tether demo`` (the README's first command, once installed)."""
    env = {**os.environ, "ANTHROPIC_API_KEY": "", "TETHER_DATA_DIR": str(data_dir)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo"], env=env, check=True, capture_output=True, cwd=REPO_ROOT
    )
    return time.perf_counter() - started


def measure(starts: int = 20, calls: int = 50, gateways: int = 3, demos: int = 3) -> list[Row]:
    """The rows of issue #17's sandbox and start-up goals, measured in this run."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as scratch:
        root = Path(scratch)
        cold, cold_first, _ = asyncio.run(_starts(root / "cold", starts, warm=0))
        warm, warm_first, _ = asyncio.run(_starts(root / "warm", starts, warm=1))
        mcp, raw = _bash_true(root / "exec", calls)
        forked = asyncio.run(_idle_memory(root / "forked", 10, zygote=True))
        spawned = asyncio.run(_idle_memory(root / "spawned", 10, zygote=False))
        started = [_gateway_listening(root / f"gw{i}") for i in range(gateways)]
        demo = statistics.median(_demo_wall(root / f"demo{i}") for i in range(demos))
    base_start = f"{BASELINE['start'] * 1000:.0f} ms"
    rows = []
    for name, samples, first in (("warm pool", warm, warm_first), ("cold", cold, cold_first)):
        p50, p99 = statistics.median(samples), _pct(samples, 0.99)
        goals = name == "warm pool"
        rows += [
            Row(
                f"sandbox start p50, {name}",
                f"{p50 * 1000:.0f} ms",
                base_start,
                p50 / BASELINE["start"],
                "<= 100 ms" if goals else "",
                p50 <= 0.100 if goals else None,
            ),
            Row(
                f"sandbox start p99, {name}",
                f"{p99 * 1000:.0f} ms",
                base_start,
                p99 / BASELINE["start"],
                "<= 200 ms" if goals else "",
                p99 <= 0.200 if goals else None,
            ),
            Row(
                f"sandbox start + first bash p50, {name}",
                f"{statistics.median(first) * 1000:.0f} ms",
                base_start,
                statistics.median(first) / BASELINE["start"],
                "",
                None,
            ),
        ]
    for name, (rss_mb, pss, private) in (("forked from the template", forked), ("spawned", spawned)):
        rows.append(
            Row(
                f"idle sandbox memory, 10 at once, {name}: PSS (RSS {rss_mb:.0f} MB, private {private:.0f} MB)",
                f"{pss:.1f} MB",
                f"{BASELINE['rss']:.0f} MB",
                pss / BASELINE["rss"],
                "<= 25 MB",
                pss <= 25,
            )
        )
    rows.append(
        Row(
            "`bash true` through MCP vs raw bwrap",
            f"{mcp * 1000:.1f} ms",
            f"{raw * 1000:.1f} ms",
            mcp / raw,
            "<= 1.5x",
            mcp / raw <= 1.5,
        )
    )
    wall = statistics.median(g[0] for g in started)
    rows.append(
        Row(
            "gateway start to listening",
            f"{wall:.2f} s",
            f"{BASELINE['gateway']:.0f} s",
            wall / BASELINE["gateway"],
            "<= 1.5 s",
            wall <= 1.5,
        )
    )
    rows.append(
        Row(
            "`tether demo` wall time",
            f"{demo:.2f} s",
            f"{BASELINE['demo']:.0f} s",
            demo / BASELINE["demo"],
            "<= 3 s",
            demo <= 3,
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=20, help="sandbox starts per variant (default 20)")
    parser.add_argument("--calls", type=int, default=50, help="bash true calls (default 50)")
    parser.add_argument("--gateways", type=int, default=3, help="gateway starts (default 3)")
    parser.add_argument("--demos", type=int, default=3, help="demo runs (default 3)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    print(
        f"sandbox start and footprint (uid {os.geteuid()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )
    rows = measure(args.starts, args.calls, args.gateways, args.demos)
    print(as_json(rows) if args.json else render(rows))


if __name__ == "__main__":
    main()
