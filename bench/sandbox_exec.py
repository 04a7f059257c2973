"""Sandbox exec latency: ``bash true`` through MCP vs. a raw ``bwrap <same args> true``.

Run: ``python bench/sandbox_exec.py`` (add ``--calls``/``--starts`` to change N).

Measures, each as median and p95:

* ``mcp``: a ``bash`` call with ``true`` to a ``tether sandbox`` process over
  streamable HTTP (one client session, N calls after a warm-up, each with the sandbox's
  bearer token, as the gateway sends it);
* ``stdio``: the same over MCP's stdio transport (a ``tether sandbox --stdio`` child);
* ``backend``: the same command through ``BubblewrapBash.run`` in this process
  (no MCP, no HTTP), to split the overhead between protocol and sandbox set-up;
* ``raw``: ``subprocess.run`` of exactly the ``bwrap`` command line the server
  builds, with ``true`` as the command (the baseline);
* ``start``: ``tether sandbox`` from spawn to its ``listening on`` line.

and the ratio mcp/raw.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from sandbox_server.auth import TOKEN_ENV, bearer_headers, new_token  # noqa: E402
from sandbox_server.bwrap import BubblewrapBash  # noqa: E402
from sandbox_server.bwrap_args import BWRAP_ENV  # noqa: E402
from sandbox_server.serving import READY_PREFIX  # noqa: E402

WARMUP = 3


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:<8} n={len(samples):<3} median {statistics.median(samples) * 1000:8.2f} ms   p95 {p95 * 1000:8.2f} ms"


def _start_sandbox(workspace: Path, token: str) -> tuple[subprocess.Popen[str], str, float]:
    """Spawn ``tether sandbox`` with ``token``; return it, its URL and the seconds until its ready line."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox_server", "sandbox", "--workspace", str(workspace), "--port", "0"],
        cwd=REPO_ROOT,
        env={**os.environ, TOKEN_ENV: token},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(READY_PREFIX):
            return process, line[len(READY_PREFIX) :].strip(), time.perf_counter() - started
    process.wait()
    raise RuntimeError("tether sandbox exited before it was ready")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def _timed(n: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


async def _bench_mcp(
    target: str | StdioServerParameters, n: int, headers: dict[str, str] | None = None
) -> list[float]:
    if isinstance(target, str):
        async with (
            httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30.0, read=300.0)) as http,
            Client(streamable_http_client(target, http_client=http)) as client,
        ):
            return await _bench_client(client, n)
    async with Client(target) as client:
        return await _bench_client(client, n)


async def _bench_client(client: Client, n: int) -> list[float]:
    async def call() -> None:
        result = await client.call_tool("bash", {"command": "true"})
        if result.is_error:
            raise RuntimeError(f"bash true failed: {result.content}")

    return await _timed(n, call)


async def _bench_backend(workspace: Path, n: int) -> list[float]:
    backend = BubblewrapBash(workspace)

    async def call() -> None:
        await backend.run("true", False, None)

    return await _timed(n, call)


def _bench_raw(workspace: Path, n: int) -> list[float]:
    backend = BubblewrapBash(workspace)
    samples = []
    for i in range(WARMUP + n):
        started = time.perf_counter()
        prepared = backend.prepare(["true"])  # the server's exact command line, /etc pipes included
        try:
            subprocess.run(
                prepared.argv, env=BWRAP_ENV, pass_fds=prepared.pass_fds, check=True, stdin=subprocess.DEVNULL
            )
        finally:
            prepared.close()
        if i >= WARMUP:
            samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="bash calls per variant (default 50)")
    parser.add_argument("--starts", type=int, default=10, help="sandbox starts timed (default 10)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tether-bench-") as scratch:
        workspace = Path(scratch, "ws")
        starts = []
        for _ in range(args.starts):
            process, _url, seconds = _start_sandbox(workspace, new_token())
            starts.append(seconds)
            _stop(process)

        token = new_token()
        process, url, _ = _start_sandbox(workspace, token)
        try:
            mcp = asyncio.run(_bench_mcp(url + "/mcp", args.calls, bearer_headers(token)))
        finally:
            _stop(process)
        stdio_server = StdioServerParameters(
            command=sys.executable,
            args=["-m", "sandbox_server", "sandbox", "--workspace", str(workspace), "--stdio"],
            cwd=str(REPO_ROOT),
        )
        stdio = asyncio.run(_bench_mcp(stdio_server, args.calls))
        backend = asyncio.run(_bench_backend(workspace, args.calls))
        raw = _bench_raw(workspace, args.calls)

    print("sandbox exec: `bash true` through MCP (streamable HTTP) vs raw `bwrap <same args> true`")
    print(_summary("mcp", mcp))
    print(_summary("stdio", stdio))
    print(_summary("backend", backend))
    print(_summary("raw", raw))
    print(_summary("start", starts))
    print(
        f"ratio mcp/raw: median {statistics.median(mcp) / statistics.median(raw):.2f}x"
        f"   (backend/raw {statistics.median(backend) / statistics.median(raw):.2f}x)"
    )


if __name__ == "__main__":
    main()
