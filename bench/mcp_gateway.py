"""MCP gateway overhead: a tool call through ``/mcp/{name}`` vs. the same call made directly.

Run: ``python bench/mcp_gateway.py`` (``--calls N`` to change the sample size).

Starts an upstream MCP server (streamable HTTP) and a gateway (real processes on
loopback), registers the upstream plus a stdio server, and measures ``add`` calls, each
as median and p95 over N calls in one client session after a warm-up:

* ``direct``: the SDK client straight to the upstream (the baseline);
* ``gateway``: the same call through the gateway, 2026-07-28 client (auth, rate limit,
  policy, vault lookup, breaker, audit record, upstream call);
* ``legacy``: through the gateway with a 2025-11-25 session;
* ``stdio-direct`` / ``stdio-gw``: the stdio server spawned by the client vs. reached
  through the gateway's supervised process.

and the ratios gateway/direct and stdio-gw/stdio-direct.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench._table import Row, render  # noqa: E402
from tests.support.mcp_gateway_stack import (  # noqa: E402
    STDIO_SERVER,
    GatewayStack,
    start_gateway,
    start_upstream,
    stdio_transport,
)

WARMUP = 5


def _summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{name:<13} n={len(samples):<4} median {statistics.median(samples) * 1000:7.2f} ms   p95 {p95 * 1000:7.2f} ms"


async def _measure(client: Client, tool: str, arguments: dict[str, object], calls: int) -> list[float]:
    for _ in range(WARMUP):
        await client.call_tool(tool, arguments)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await client.call_tool(tool, arguments)
        samples.append(time.perf_counter() - started)
        assert not result.is_error, result
    return samples


@asynccontextmanager
async def _http_client(url: str, headers: dict[str, str], mode: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client


async def run(stack: GatewayStack, upstream_url: str, calls: int) -> dict[str, list[float]]:
    key = {"x-api-key": stack.api_key}
    results: dict[str, list[float]] = {}
    runs: list[tuple[str, Callable[[], Awaitable[list[float]]]]] = []

    async def direct() -> list[float]:
        async with _http_client(upstream_url + "/mcp", {}, "auto") as client:
            return await _measure(client, "add", {"a": 1, "b": 2}, calls)

    async def gateway(mode: str) -> list[float]:
        async with _http_client(stack.mcp_url("bench"), key, mode) as client:
            return await _measure(client, "add", {"a": 1, "b": 2}, calls)

    async def stdio_direct() -> list[float]:
        async with Client(StdioServerParameters(command=sys.executable, args=[STDIO_SERVER])) as client:
            return await _measure(client, "shout", {"text": "x"}, calls)

    async def stdio_gateway() -> list[float]:
        async with _http_client(stack.mcp_url("bench"), key, "auto") as client:
            return await _measure(client, "shout", {"text": "x"}, calls)

    runs = [
        ("direct", direct),
        ("gateway", lambda: gateway("auto")),
        ("legacy", lambda: gateway("legacy")),
        ("stdio-direct", stdio_direct),
        ("stdio-gw", stdio_gateway),
    ]
    for name, measure in runs:
        results[name] = await measure()
    return results


def measure(calls: int = 200) -> dict[str, list[float]]:
    """Seconds per call for each path, all measured in this run."""
    api_key = "bench-" + secrets.token_hex(8)
    upstream = start_upstream("bench")
    with tempfile.TemporaryDirectory() as data:
        gateway = start_gateway(
            Path(data), api_key, {"TETHER_MCP_RATE_PER_MINUTE": "1000000", "TETHER_MCP_RATE_BURST": "100000"}
        )
        stack = GatewayStack(gateway, api_key)
        try:
            stack.register_url("up", upstream)
            stack.post("/v1/mcp_servers", {"name": "local", "transport": stdio_transport()})
            stack.post(
                "/v1/mcp_virtual_servers",
                {"name": "bench", "servers": [{"server": "up", "tools": ["add"]}, {"server": "local"}]},
            )
            return asyncio.run(run(stack, upstream.url, calls))
        finally:
            gateway.stop()
            upstream.stop()


def rows(results: dict[str, list[float]]) -> list[Row]:
    """Issue #16's latency goal: through the gateway <= 1.3x the direct call (medians)."""
    direct = statistics.median(results["direct"])
    stdio = statistics.median(results["stdio-direct"])
    out = []
    for name, base, label in (
        ("gateway", direct, "MCP call via /mcp/{name}, 2026-07-28 client"),
        ("legacy", direct, "MCP call via /mcp/{name}, 2025-11-25 session"),
        ("stdio-gw", stdio, "MCP call via the gateway to a stdio server"),
    ):
        value = statistics.median(results[name])
        baseline = f"{base * 1000:.1f} ms direct"
        out.append(
            Row(label, f"{value * 1000:.1f} ms", baseline, value / base, "<= 1.3x", value / base <= 1.3)
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    results = measure(args.calls)
    for name, samples in results.items():
        print(_summary(name, samples))
    print(render(rows(results)))


if __name__ == "__main__":
    main()
