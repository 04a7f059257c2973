"""Tunnel round trip: an MCP tool call through the tunnel vs. the same call direct on loopback.

Run: ``python bench/tunnel_roundtrip.py`` (``--calls N`` to change the sample size).

Starts a gateway (``create_app`` plus the tunnel wiring, as the tests do), a real
``python -m tunnel_agent`` process with two connections, and an on-prem MCP server on
127.0.0.1. The same MCP ``echo`` tool call is then timed two ways, both from the
gateway's event loop:

* ``direct``: to the on-prem server's own URL (the baseline);
* ``tunnel``: to ``http://crm.<tunnel domain>/mcp`` through ``hub.transport_for``,
  i.e. gateway -> WebSocket -> agent -> HTTP to the server and back.

Each is measured with one MCP client session reused for every call ("call") and with
a fresh client per call ("connect+call", what the gateway's MCP client does), for a small
payload and a 64 KiB one. Prints median and p95 in milliseconds and the ratio tunnel/direct.
In connect+call the direct path opens a new TCP connection per call while the tunnel
reuses its WebSocket and the agent's pooled upstream connection: that mode measures what
a caller pays per call, not the wire alone.
"""

from __future__ import annotations

import argparse
import logging
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.processes import start_server  # noqa: E402
from tests.support.tunnel_agents import start_agent, write_config  # noqa: E402
from tests.support.tunnel_gateway import TunnelGateway, running_tunnel_gateway  # noqa: E402

WARMUP = 5


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


TLS = ssl.create_default_context()
"""Shared: building an SSL context per ``httpx2.AsyncClient`` costs ~20 ms, which would
otherwise dominate the direct path's connect+call figure (the tunnel transport needs none)."""


def client_for(url: str, gateway: TunnelGateway) -> tuple[httpx2.AsyncClient, Client]:
    transport = gateway.hub.transport_for(url)
    http = (
        httpx2.AsyncClient(transport=transport, timeout=30)
        if transport
        else httpx2.AsyncClient(timeout=30, verify=TLS)
    )
    return http, Client(streamable_http_client(url, http_client=http), read_timeout_seconds=30)


async def reused_session(url: str, gateway: TunnelGateway, text: str, calls: int) -> list[float]:
    http, client = client_for(url, gateway)
    samples: list[float] = []
    async with http, client:
        for index in range(WARMUP + calls):
            started = time.perf_counter()
            result = await client.call_tool("echo", {"text": text})
            elapsed = time.perf_counter() - started
            assert not result.is_error
            if index >= WARMUP:
                samples.append(elapsed * 1000)
    return samples


async def fresh_sessions(url: str, gateway: TunnelGateway, text: str, calls: int) -> list[float]:
    samples: list[float] = []
    for index in range(WARMUP + calls):
        started = time.perf_counter()
        http, client = client_for(url, gateway)
        async with http, client:
            result = await client.call_tool("echo", {"text": text})
        elapsed = time.perf_counter() - started
        assert not result.is_error
        if index >= WARMUP:
            samples.append(elapsed * 1000)
    return samples


Measure = Callable[[str, TunnelGateway, str, int], Awaitable[list[float]]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as scratch,
        running_tunnel_gateway(Path(scratch), logging.WARNING) as gateway,
    ):
        onprem = start_server(["--port", "0", "--name", "crm"], module="tests.support.tunnel_onprem")
        sdk = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0)
        tunnel = sdk.beta.tunnels.create(display_name="bench")
        token = sdk.beta.tunnels.reveal_token(tunnel.id).tunnel_token
        config = write_config(Path(scratch) / "tunnel.yaml", [{"subdomain": "crm", "target": onprem.url}])
        agent = start_agent(gateway.url, token, config, "bench-agent", connections=2, ping=(5.0, 5.0))
        try:
            gateway.call(gateway.hub.wait_for_connections, tunnel.id, 2)
            urls = {"direct": onprem.url + "/mcp", "tunnel": f"http://crm.{tunnel.domain}/mcp"}
            modes: list[tuple[str, Measure]] = [("call", reused_session), ("connect+call", fresh_sessions)]
            payloads = {"small": "ping", "64KiB": "x" * 65536}
            print(f"MCP echo round trip, {args.calls} calls each after {WARMUP} warm-up (ms)")
            print(
                f"{'mode':<13} {'payload':<7} {'direct p50':>10} {'p95':>7} {'tunnel p50':>10} {'p95':>7} ratio"
            )
            for mode, measure in modes:
                for label, text in payloads.items():
                    stats: dict[str, Any] = {}
                    for path, url in urls.items():
                        samples = gateway.call(measure, url, gateway, text, args.calls, timeout=600)
                        stats[path] = (statistics.median(samples), percentile(samples, 0.95))
                    ratio = stats["tunnel"][0] / stats["direct"][0]
                    print(
                        f"{mode:<13} {label:<7} {stats['direct'][0]:>10.2f} {stats['direct'][1]:>7.2f} "
                        f"{stats['tunnel'][0]:>10.2f} {stats['tunnel'][1]:>7.2f} {ratio:.2f}x"
                    )
        finally:
            agent.stop()
            onprem.stop()
            sdk.close()


if __name__ == "__main__":
    main()
