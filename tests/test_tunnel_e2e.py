"""End to end: gateway, real ``python -m tunnel_agent`` processes, and on-prem MCP servers.

The on-prem servers listen on 127.0.0.1 and only the agent is configured for them; the
gateway reaches them solely through ``hub.transport_for(url)`` with URLs under the
tunnel's domain (names that resolve nowhere). Agents ping every 0.2 s with a 1 s deadline
so failures are detected quickly; no test sleeps to synchronise: each waits on the hub's
own record of live connections.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.support.processes import ServerProcess, start_server
from tests.support.tunnel_agents import call_tool, start_agent, text_of, write_config
from tests.support.tunnel_gateway import FAST_PINGS, TunnelGateway, running_tunnel_gateway, sdk_for
from tests.support.tunnel_onprem import fingerprint

CRM_SECRET = "crm-secret-" + os.urandom(8).hex()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelGateway]:
    with running_tunnel_gateway(tmp_path_factory.mktemp("tunnel-e2e"), **FAST_PINGS) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: TunnelGateway) -> Iterator[anthropic.Anthropic]:
    with sdk_for(gateway) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def crm() -> Iterator[ServerProcess]:
    with _onprem("crm") as server:
        yield server


@pytest.fixture(scope="module")
def forbidden() -> Iterator[ServerProcess]:
    """A second on-prem server the agent has a route for but may not connect to."""
    with _onprem("forbidden") as server:
        yield server


class _onprem:
    def __init__(self, name: str) -> None:
        self.server = start_server(["--port", "0", "--name", name], module="tests.support.tunnel_onprem")

    def __enter__(self) -> ServerProcess:
        return self.server

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1])


class Tunnel:
    def __init__(
        self, client: anthropic.Anthropic, gateway: TunnelGateway, tmp_path: Path, crm: ServerProcess
    ):
        created = client.beta.tunnels.create(display_name="e2e")
        self.id = created.id
        self.domain = created.domain
        self.token = client.beta.tunnels.reveal_token(created.id).tunnel_token
        self.gateway = gateway
        self.agents: list[ServerProcess] = []
        self.config = write_config(
            tmp_path / "tunnel.yaml",
            [
                {
                    "subdomain": "crm",
                    "target": f"{crm.url}",
                    "headers": {"Authorization": "Bearer ${CRM_TOKEN}"},
                }
            ],
        )

    def url(self, subdomain: str = "crm") -> str:
        return f"http://{subdomain}.{self.domain}/mcp"

    def start_agent(self, agent_id: str, connections: int = 2, config: Path | None = None) -> ServerProcess:
        agent = start_agent(
            self.gateway.url,
            self.token,
            config or self.config,
            agent_id,
            connections=connections,
            env={"CRM_TOKEN": CRM_SECRET},
        )
        self.agents.append(agent)
        return agent

    def wait_for(self, connections: int) -> None:
        self.gateway.call(self.gateway.hub.wait_for_connections, self.id, connections, 15.0)

    def call(self, name: str, arguments: dict[str, Any] | None = None, subdomain: str = "crm") -> Any:
        return self.gateway.call(call_tool, self.gateway.hub, self.url(subdomain), name, arguments)

    def stop(self) -> None:
        for agent in self.agents:
            if agent.process.poll() is None:
                agent.process.send_signal(signal.SIGCONT)
            agent.stop()


@pytest.fixture
def tunnel(
    client: anthropic.Anthropic, gateway: TunnelGateway, tmp_path: Path, crm: ServerProcess
) -> Iterator[Tunnel]:
    made = Tunnel(client, gateway, tmp_path, crm)
    try:
        yield made
    finally:
        made.stop()


def test_an_mcp_call_reaches_the_on_prem_server_through_the_tunnel(
    tunnel: Tunnel, client: anthropic.Anthropic, gateway: TunnelGateway
) -> None:
    agent = tunnel.start_agent("agent-a", connections=2)
    tunnel.wait_for(2)

    result = tunnel.call("whoami")

    assert not result.is_error
    # The agent added the credential on the last hop; only its digest comes back.
    assert text_of(result) == fingerprint(f"Bearer {CRM_SECRET}")
    assert tunnel.call("server_name").content[0].text == "crm"
    # The secret appears nowhere on the gateway side: not in its logs, not in the API.
    api = [
        client.beta.tunnels.with_raw_response.retrieve(tunnel.id).http_response.text,
        client.beta.tunnels.with_raw_response.list(include_archived=True).http_response.text,
    ]
    assert CRM_SECRET not in gateway.logs.text
    assert all(CRM_SECRET not in body for body in api)
    assert tunnel.token not in gateway.logs.text
    assert not any(CRM_SECRET in line or tunnel.token in line for line in agent.output)


def test_streams_spread_over_both_connections(tunnel: Tunnel, gateway: TunnelGateway) -> None:
    tunnel.start_agent("agent-a", connections=2)
    tunnel.wait_for(2)
    for _ in range(4):
        assert not tunnel.call("server_name").is_error
    opened = [c.mux.counters.streams_opened for c in gateway.hub.connections(tunnel.id)]
    assert len(opened) == 2 and all(count > 0 for count in opened)


def test_a_large_response_streams_through_the_credit_window(tunnel: Tunnel) -> None:
    tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    payload = "x" * 2_000_000  # many times the 256 KiB per-stream window
    assert tunnel.call("echo", {"text": payload}).content[0].text == payload


def test_the_agent_refuses_targets_outside_its_allow_list(
    tunnel: Tunnel, crm: ServerProcess, forbidden: ServerProcess, tmp_path: Path, gateway: TunnelGateway
) -> None:
    config = write_config(
        tmp_path / "restricted.yaml",
        [
            {"subdomain": "crm", "target": crm.url},
            # A route to a name that resolves to an address not on the allow-list.
            {"subdomain": "other", "target": f"http://localhost:{port_of(forbidden)}"},
        ],
        allow=[f"127.0.0.1:{port_of(crm)}"],
    )
    agent = tunnel.start_agent("agent-a", config=config)
    tunnel.wait_for(2)

    for subdomain in ("other", "unknown"):
        with pytest.raises(httpx2.ConnectError, match=r"allow-list|no route"):
            tunnel.call("server_name", subdomain=subdomain)
    assert tunnel.call("server_name").content[0].text == "crm"

    metrics = httpx2.get(agent.url + "/metrics").text
    assert 'tether_tunnel_streams_refused_total{reason="not_allowed"}' in metrics
    assert 'tether_tunnel_streams_refused_total{reason="unknown"}' in metrics
    assert gateway.hub.stats()["stream_errors_total"].get("refused", 0) >= 2


def test_a_host_under_the_base_domain_never_falls_through_to_dns(
    gateway: TunnelGateway, tunnel: Tunnel
) -> None:
    assert gateway.hub.transport_for("http://example.com/mcp") is None
    unknown = tunnel.url().replace(tunnel.domain, "nosuchtunnel." + gateway.hub.base_domain)
    with pytest.raises(httpx2.ConnectError, match="no tunnel has the domain"):
        gateway.call(call_tool, gateway.hub, unknown, "whoami")


def test_calls_keep_working_when_one_of_two_agents_is_killed(tunnel: Tunnel, gateway: TunnelGateway) -> None:
    doomed = tunnel.start_agent("agent-a", connections=1)
    tunnel.start_agent("agent-b", connections=1)
    tunnel.wait_for(2)

    doomed.process.kill()
    tunnel.wait_for(1)

    for _ in range(3):
        assert tunnel.call("whoami").content[0].text == fingerprint(f"Bearer {CRM_SECRET}")
    assert gateway.hub.stats()["tunnels"][tunnel.id]["agents"] == ["agent-b"]


def test_a_silently_dead_agent_is_dropped_at_the_ping_deadline(
    tunnel: Tunnel, gateway: TunnelGateway
) -> None:
    frozen = tunnel.start_agent("agent-a", connections=1)
    tunnel.start_agent("agent-b", connections=1)
    tunnel.wait_for(2)

    frozen.process.send_signal(signal.SIGSTOP)  # the socket stays open; nothing answers
    tunnel.wait_for(1)  # within the 1 s pong deadline, not the minutes TCP would take

    assert not tunnel.call("server_name").is_error
    frozen.process.send_signal(signal.SIGCONT)
    tunnel.wait_for(2)  # it notices its dead link and dials again


def test_a_restarted_agent_reconnects(tunnel: Tunnel) -> None:
    first = tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    first.process.kill()
    tunnel.wait_for(0)

    tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    assert not tunnel.call("whoami").is_error


def test_a_stopping_agent_closes_its_links_with_1001(tunnel: Tunnel, gateway: TunnelGateway) -> None:
    agent = tunnel.start_agent("agent-a")
    tunnel.wait_for(2)

    agent.process.terminate()

    assert agent.process.wait(timeout=10) == 0
    tunnel.wait_for(0)
    goodbyes = [line for line in gateway.logs.lines if tunnel.id in line and "code 1001" in line]
    assert len(goodbyes) == 2


def test_the_agent_redials_when_the_gateway_drops_its_connections(
    tunnel: Tunnel, gateway: TunnelGateway
) -> None:
    tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    connects_before = gateway.hub.counters.connects_total

    dropped = gateway.call(gateway.hub.drop_stale, tunnel.id, "no-such-token-version", 1012, "restart")
    assert dropped == 2

    tunnel.wait_for(2)
    assert gateway.hub.counters.connects_total >= connects_before + 2
    assert not tunnel.call("server_name").is_error


def test_the_agent_reports_readiness_and_metrics(tunnel: Tunnel) -> None:
    agent = tunnel.start_agent("agent-a")
    tunnel.wait_for(2)
    tunnel.call("server_name")

    ready = httpx2.get(agent.url + "/ready")
    metrics = httpx2.get(agent.url + "/metrics")

    assert ready.status_code == 200 and ready.json() == {"ready": True, "connections": 2}
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'tether_tunnel_connections{slot="0"} 1' in metrics.text
    assert 'tether_tunnel_upstream_responses_total{route="crm",status="2xx"}' in metrics.text
