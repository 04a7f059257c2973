"""Every benchmark with a goal, in one table: path, Tether, baseline, ratio, goal, met.

    python bench/run.py            # the table as Markdown (the README's Benchmarks section)
    python bench/run.py --json     # the rows as JSON
    python bench/run.py --quick    # smaller samples, for a quick look

Runs, in this order and in one run on this machine: sandbox start, footprint, ``bash true``
overhead, gateway start and demo wall time (``sandbox_start.py``); durable append throughput
on SQLite and PostgreSQL against raw commit-per-event loops (``log_append.py``); MCP calls
through the gateway against direct calls (``mcp_gateway.py``). Baselines are measured in the
same run where one can be (raw loops, direct calls), and otherwise are the figures of the
issue that set the goal. The benches without a goal of this kind print their own reports:
``session_log.py`` (append-to-SSE latency), ``tunnel_roundtrip.py``, ``harness_steps.py``,
``harness_soak.py``, ``prompt_caching.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import log_append, mcp_gateway, sandbox_start
from bench._table import Row, as_json, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller samples (a quick look, noisier)")
    parser.add_argument("--backends", default="sqlite,postgres", help="store backends for the append rows")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    rows: list[Row] = []
    rows += sandbox_start.measure(
        starts=20 // scale, calls=200 // scale, gateways=3, demos=3 // min(scale, 3)
    )
    rows += asyncio.run(log_append.measure(events=200 // scale, backends=args.backends.split(",")))
    rows += mcp_gateway.rows(mcp_gateway.measure(calls=300 // scale))
    if args.json:
        print(as_json(rows))
        return
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"uid {os.geteuid()}, load {os.getloadavg()[0]:.1f}\n"
    )
    print(render(rows))


if __name__ == "__main__":
    main()
