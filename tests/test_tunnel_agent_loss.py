"""An MCP call in flight through a tunnel fails within about 2 s of losing its agent.

Real parts throughout: the gateway (its tunnel hub on default ping settings, so only the
faster pinging of links that carry streams can meet the bound for a frozen agent), a real
``python -m tunnel_agent`` process, and an on-prem MCP server whose ``block`` tool never
answers. The agent is killed (SIGKILL: its TCP connection closes) or frozen (SIGSTOP: the
connection stays open and only missed pongs reveal it). The on-prem server is resumable
(its SSE events carry ids), so the client tries to resume the broken response stream:
those attempts must fail at once rather than each wait for an agent. The bound is behavioural, not a
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
from dataclasses import replace
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.tunnels.hub import TunnelHub
from tests.conftest import Scripts
from tests.support.processes import ServerProcess, start_server
from tests.support.sessions import user_message
from tests.support.tunnel_agents import start_agent, text_of, write_config
from tests.support.tunnel_gateway import TunnelGateway, running_tunnel_gateway
from tunnel_agent.link import memory_link_pair
from tunnel_agent.mux import Mux, MuxSettings, Role, StreamReset
from tunnel_agent.protocol import ErrorCode

BOUND = 3.0
"""Seconds from the agent's loss to the call's failure (the goal is 2 s; margin for load)."""


@pytest.fixture(scope="module")
def tunnel_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelGateway]:
    # The hub's default idle pinging (every 5 s, 5 s deadline) and connect wait.
    with running_tunnel_gateway(tmp_path_factory.mktemp("tunnel-loss"), connect_wait=5.0) as running:
        yield running


@pytest.fixture(scope="module")
def tunnel_client(tunnel_gateway: TunnelGateway) -> Iterator[anthropic.Anthropic]:
    gateway = tunnel_gateway
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0, timeout=30) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def onprem() -> Iterator[ServerProcess]:
    server = start_server(["--port", "0"], module="tests.support.resumable_mcp")
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

    def submit(self, name: str, arguments: dict[str, Any] | None = None, mode: str = "auto") -> Future[Any]:
        """Start a call on the gateway's loop (where the hub lives) without waiting for it."""
        coroutine = _call(self.gateway.hub, self.url, name, arguments or {}, mode)
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
    tunnel_client: anthropic.Anthropic, tunnel_gateway: TunnelGateway, onprem: ServerProcess, tmp_path: Path
) -> Iterator[Tunnel]:
    made = Tunnel(tunnel_client, tunnel_gateway, onprem, tmp_path)
    try:
        yield made
    finally:
        made.stop()


async def _call(hub: TunnelHub, url: str, name: str, arguments: dict[str, Any], mode: str) -> Any:
    """A tool call through the hub's transport in either protocol era ("legacy": the
    initialize handshake and a session; "auto": 2026-07-28 when the server offers it)."""
    transport = hub.transport_for(url)
    assert transport is not None
    try:
        async with (
            httpx2.AsyncClient(transport=transport, timeout=60) as http,
            Client(
                streamable_http_client(url, http_client=http), read_timeout_seconds=60, mode=mode
            ) as client,
        ):
            return await client.call_tool(name, arguments)
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from group


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _wait_for_file(path: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _failure_after_loss(
    tunnel: Tunnel, tmp_path: Path, lose: signal.Signals, mode: str
) -> tuple[float, BaseException]:
    """Start a blocking call, take the agent down with ``lose`` once the call has reached the
    on-prem server, and return how long the call took to fail after that, and its error."""
    agent = tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    marker = tmp_path / "block-started"
    pending = tunnel.submit("block", {"marker": str(marker)}, mode)
    _wait_for_file(marker)
    assert not pending.done()

    os.kill(agent.process.pid, lose)
    lost_at = time.monotonic()
    with pytest.raises(Exception) as failure:
        pending.result(30)
    elapsed = time.monotonic() - lost_at
    print(f"\n{mode} call failed {elapsed:.2f}s after {lose.name} of the tunnel agent: {failure.value!r}")
    return elapsed, failure.value


def _recovers(tunnel: Tunnel, gateway: TunnelGateway) -> None:
    assert httpx2.get(gateway.url + "/health").status_code == 200
    tunnel.start_agent("agent-b")
    tunnel.wait_for(2)
    assert text_of(tunnel.call("add", {"a": 2, "b": 3})) == "onprem:5"


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("lose", [signal.SIGKILL, signal.SIGSTOP], ids=["kill", "stop"])
def test_an_in_flight_call_fails_soon_after_the_agent_is_lost(
    tunnel: Tunnel, tunnel_gateway: TunnelGateway, tmp_path: Path, lose: signal.Signals, mode: str
) -> None:
    elapsed, error = _failure_after_loss(tunnel, tmp_path, lose, mode)

    assert elapsed < BOUND, f"the call took {elapsed:.2f}s to fail after {lose.name}"
    assert "tunnel" in str(error).lower()
    if lose is signal.SIGSTOP:
        # A frozen agent's connections are found dead by missed pongs, not by TCP closing;
        # its idle one too, on the idle schedule.
        assert "no pong" in str(error)
        tunnel.wait_for(0)
    _recovers(tunnel, tunnel_gateway)


def test_a_new_call_still_waits_for_an_agent_to_reconnect(tunnel: Tunnel) -> None:
    agent = tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    agent.process.kill()
    tunnel.wait_for(0)

    issued_at = time.monotonic()
    pending = tunnel.submit("add", {"a": 1, "b": 1})  # no agent is connected now
    tunnel.start_agent("agent-b")  # a restart: the call is served once it reconnects

    assert text_of(pending.result(30)) == "onprem:2"
    print(f"\nthe new call waited {time.monotonic() - issued_at:.2f}s for the restarted agent")


@pytest.mark.parametrize("lose", [signal.SIGKILL, signal.SIGSTOP], ids=["kill", "stop"])
def test_a_session_tool_call_fails_naming_the_tunnel_soon_after_the_agent_is_lost(
    client: anthropic.Anthropic,
    gateway: ServerProcess,
    scripts: Scripts,
    environment: Any,
    onprem: ServerProcess,
    tmp_path: Path,
    lose: signal.Signals,
) -> None:
    """The gateway process's own hub, on its default settings, and the session's MCP client:
    the tool result is an error naming the tunnel, long before the tool timeout (120 s)."""
    created = client.beta.tunnels.create(display_name="session-loss")
    token = client.beta.tunnels.reveal_token(created.id).tunnel_token
    config = write_config(tmp_path / "tunnel.yaml", [{"subdomain": "tools", "target": onprem.url}])
    marker = tmp_path / "block-started"
    script = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "block", "input": {"marker": str(marker)}}]},
            {"content": [{"type": "text", "text": "the tool failed"}]},
        ]
    )
    agent = client.beta.agents.create(
        name="onprem-user",
        model="claude-sonnet-4-6",
        system=script,
        mcp_servers=[{"type": "url", "name": "tools", "url": f"http://tools.{created.domain}/mcp"}],
        tools=[
            {
                "type": "mcp_toolset",
                "mcp_server_name": "tools",
                "default_config": {"permission_policy": {"type": "always_allow"}},
            }
        ],
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    tunnel_agent = start_agent(gateway.url, token, config, "agent-a", connections=2)
    try:
        _wait_for_agent(tunnel_agent)
        client.beta.sessions.events.send(session.id, events=[user_message("block on-prem")])  # type: ignore[list-item]
        _wait_for_file(marker, 60)

        os.kill(tunnel_agent.process.pid, lose)
        lost_at = time.monotonic()
        result = _wait_for_event(client, session.id, "agent.mcp_tool_result", lost_at + 30)
        elapsed = time.monotonic() - lost_at
    finally:
        tunnel_agent.process.send_signal(signal.SIGCONT)
        tunnel_agent.stop()
    print(f"\nthe session's tool call failed {elapsed:.2f}s after {lose.name}: {result.content[0].text}")

    assert result.is_error
    assert "tunnel" in result.content[0].text.lower()
    assert elapsed < BOUND, f"the tool result came {elapsed:.2f}s after {lose.name}"
    _wait_for_event(client, session.id, "session.status_idle", time.monotonic() + 30)


def _wait_for_agent(agent: ServerProcess, timeout: float = 15.0) -> None:
    """Both connections up, as the agent's own ``/ready`` reports them."""
    deadline = time.monotonic() + timeout
    while httpx2.get(agent.url + "/ready").json()["connections"] < 2:
        assert time.monotonic() < deadline, "the tunnel agent never connected"
        time.sleep(0.05)


def _wait_for_event(client: anthropic.Anthropic, session_id: str, kind: str, deadline: float) -> Any:
    while True:
        for event in client.beta.sessions.events.list(session_id).data:
            if event.type == kind:
                return event
        assert time.monotonic() < deadline, f"no {kind} event in time"
        time.sleep(0.05)


BUSY = MuxSettings(ping_interval=60, ping_timeout=60, busy_ping_interval=0.1, busy_ping_timeout=0.3)
"""Idle links ping once a minute; links carrying streams every 0.1 s with a 0.3 s deadline."""


@pytest.mark.anyio
@pytest.mark.parametrize("ping_first", [False, True], ids=["idle", "ping-outstanding"])
async def test_a_stream_opened_on_a_silent_link_fails_on_the_busy_schedule(ping_first: bool) -> None:
    """The peer never answers: with only idle pinging the stream would wait two minutes. Opening
    it switches the pinger to the busy schedule at once, even while an idle ping is out."""
    local, peer = memory_link_pair()
    mux = Mux(local, Role.GATEWAY, settings=BUSY if not ping_first else replace(BUSY, ping_interval=0.05))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(mux.run)
        if ping_first:
            # The first frame the peer gets is an idle ping (60 s deadline); it never answers.
            with anyio.fail_after(5):
                await peer.receive()
            assert mux.counters.pings_sent == 1
        opened_at = anyio.current_time()
        stream = mux.open("tools")
        with anyio.fail_after(5), pytest.raises(StreamReset) as caught:
            await stream.receive()
        elapsed = anyio.current_time() - opened_at
    assert caught.value.code is ErrorCode.LINK_LOST
    assert mux.close_code == 4408 and "no pong within 0.3s" in (mux.close_reason or "")
    assert elapsed < 2.0, f"the stream took {elapsed:.2f}s to fail"
