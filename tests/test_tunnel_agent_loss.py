"""An MCP call in flight through a tunnel fails within about 2 s of losing its agent.

Real parts throughout: the gateway (its tunnel hub on default ping settings, so only the
faster pinging of links that carry streams can meet the bound for a frozen agent), a real
``python -m tunnel_agent`` process, and an on-prem MCP server whose ``block`` tool never
answers. The agent is killed (SIGKILL: its TCP connection closes) or frozen (SIGSTOP: the
connection stays open and only missed pongs reveal it). The bound is behavioural, not a
benchmark: the measured figure is printed, the assertion keeps a margin for a loaded
machine. Afterwards the gateway is healthy and a new agent serves new calls; and a new
call made while no agent is connected still waits ``connect_wait`` for one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.support.processes import ServerProcess, start_server
from tests.support.tunnel_agents import call_tool, start_agent, text_of, write_config
from tests.support.tunnel_gateway import TunnelGateway, running_tunnel_gateway

BOUND = 3.0
"""Seconds from the agent's loss to the call's failure (the goal is 2 s; margin for load)."""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelGateway]:
    # The hub's default idle pinging (every 5 s, 5 s deadline) and connect wait.
    with running_tunnel_gateway(tmp_path_factory.mktemp("tunnel-loss"), connect_wait=5.0) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: TunnelGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0, timeout=30) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def onprem() -> Iterator[ServerProcess]:
    server = start_server(["--label", "onprem", "--port", "0"], module="tests.support.mcp_gateway_upstream")
    try:
        yield server
    finally:
        server.stop()


class Tunnel:
    def __init__(
        self, client: anthropic.Anthropic, gateway: TunnelGateway, onprem: ServerProcess, tmp_path: Path
    ) -> None:
        created = client.beta.tunnels.create(display_name="agent-loss")
        self.id = created.id
        self.url = f"http://tools.{created.domain}/mcp"
        self.token = client.beta.tunnels.reveal_token(created.id).tunnel_token
        self.gateway = gateway
        self.config = write_config(tmp_path / "tunnel.yaml", [{"subdomain": "tools", "target": onprem.url}])
        self.agents: list[ServerProcess] = []

    def start_agent(self, agent_id: str) -> ServerProcess:
        agent = start_agent(self.gateway.url, self.token, self.config, agent_id, connections=2)
        self.agents.append(agent)
        return agent

    def wait_for(self, connections: int) -> None:
        self.gateway.call(self.gateway.hub.wait_for_connections, self.id, connections, 15.0)

    def submit(self, name: str, arguments: dict[str, Any] | None = None) -> Future[Any]:
        """Start a call on the gateway's loop (where the hub lives) without waiting for it."""
        coroutine = call_tool(self.gateway.hub, self.url, name, arguments, 60)
        return asyncio.run_coroutine_threadsafe(coroutine, self.gateway.loop)

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.submit(name, arguments).result(60)

    def stop(self) -> None:
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGCONT)
            agent.stop()


@pytest.fixture
def tunnel(
    client: anthropic.Anthropic, gateway: TunnelGateway, onprem: ServerProcess, tmp_path: Path
) -> Iterator[Tunnel]:
    made = Tunnel(client, gateway, onprem, tmp_path)
    try:
        yield made
    finally:
        made.stop()


def _wait_for_file(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _failure_after_loss(tunnel: Tunnel, tmp_path: Path, lose: signal.Signals) -> tuple[float, BaseException]:
    """Start a blocking call, take the agent down with ``lose`` once the call has reached the
    on-prem server, and return how long the call took to fail after that, and its error."""
    agent = tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    marker = tmp_path / "block-started"
    pending = tunnel.submit("block", {"marker": str(marker)})
    _wait_for_file(marker)
    assert not pending.done()

    os.kill(agent.process.pid, lose)
    lost_at = time.monotonic()
    with pytest.raises(Exception) as failure:
        pending.result(30)
    elapsed = time.monotonic() - lost_at
    print(f"\nin-flight call failed {elapsed:.2f}s after {lose.name} of the tunnel agent: {failure.value}")
    return elapsed, failure.value


def _recovers(tunnel: Tunnel, gateway: TunnelGateway) -> None:
    assert httpx2.get(gateway.url + "/health").status_code == 200
    tunnel.start_agent("agent-b")
    tunnel.wait_for(2)
    assert text_of(tunnel.call("add", {"a": 2, "b": 3})) == "onprem:5"


@pytest.mark.parametrize("lose", [signal.SIGKILL, signal.SIGSTOP], ids=["kill", "stop"])
def test_an_in_flight_call_fails_soon_after_the_agent_is_lost(
    tunnel: Tunnel, gateway: TunnelGateway, tmp_path: Path, lose: signal.Signals
) -> None:
    elapsed, error = _failure_after_loss(tunnel, tmp_path, lose)

    assert elapsed < BOUND, f"the call took {elapsed:.2f}s to fail after {lose.name}"
    assert "tunnel" in str(error).lower()
    if lose is signal.SIGSTOP:
        # A frozen agent's connections are found dead by missed pongs, not by TCP closing.
        assert "no pong" in gateway.logs.text
    _recovers(tunnel, gateway)


def test_a_new_call_still_waits_for_an_agent_to_reconnect(tunnel: Tunnel, gateway: TunnelGateway) -> None:
    agent = tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    agent.process.kill()
    tunnel.wait_for(0)

    issued_at = time.monotonic()
    pending = tunnel.submit("add", {"a": 1, "b": 1})  # no agent is connected now
    tunnel.start_agent("agent-b")  # a restart: the call is served once it reconnects

    assert text_of(pending.result(30)) == "onprem:2"
    print(f"\nthe new call waited {time.monotonic() - issued_at:.2f}s for the restarted agent")
