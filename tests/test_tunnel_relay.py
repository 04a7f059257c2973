"""The agent's relay and the gateway's transport, joined by an in-memory link.

The upstream is an ``httpx2.MockTransport`` and DNS is an injected resolver, so these
tests pin down exactly where the agent connects and what it sends, including the cases
where a name resolves somewhere the allow-list does not cover.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import pytest

from gateway.tunnels.transport import TunnelTransport
from tunnel_agent.config import parse_config
from tunnel_agent.link import memory_link_pair
from tunnel_agent.metrics import AgentMetrics
from tunnel_agent.mux import Mux, MuxSettings, MuxStream, Role
from tunnel_agent.protocol import ErrorCode
from tunnel_agent.relay import Relay

pytestmark = pytest.mark.anyio

SETTINGS = MuxSettings(ping_interval=60, ping_timeout=60)
DOMAIN = "t1.tunnels.test"


@dataclass
class FakeConnection:
    tunnel_id: str = "tnl_test"
    agent_id: str = "agent"
    slot: int = 0


@dataclass
class FakeHub:
    """Just what ``TunnelTransport`` uses of a hub: open a stream, record failures."""

    mux: Mux
    errors: list[ErrorCode] = field(default_factory=list)

    async def open_stream(self, host: str) -> tuple[MuxStream, FakeConnection]:
        return self.mux.open(host.removesuffix("." + DOMAIN)), FakeConnection()

    def record_stream_error(self, connection: Any, code: ErrorCode, message: str) -> None:
        self.errors.append(code)


@dataclass
class Tunnel:
    http: httpx2.AsyncClient
    hub: FakeHub
    metrics: AgentMetrics
    upstream: list[httpx2.Request]


async def _chunks(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 100_000):
        yield body[start : start + 100_000]


def dns(table: dict[str, list[str]]) -> Callable[[str, int], Any]:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(-2, "Name or service not known")
        return table[host]

    return resolve


@asynccontextmanager
async def tunnel(
    config: dict[str, Any],
    handler: Callable[[httpx2.Request], httpx2.Response] | None = None,
    table: dict[str, list[str]] | None = None,
    environ: dict[str, str] | None = None,
) -> AsyncIterator[Tunnel]:
    seen: list[httpx2.Request] = []

    async def upstream(request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        seen.append(request)
        answer = (handler or (lambda r: httpx2.Response(200, text="ok")))(request)
        # Hand the body over as a stream, as a network response would (the relay reads it raw).
        return httpx2.Response(answer.status_code, headers=answer.headers, content=_chunks(answer.content))

    metrics = AgentMetrics()
    gateway_link, agent_link = memory_link_pair()
    gateway = Mux(gateway_link, Role.GATEWAY, settings=SETTINGS)
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(upstream)) as upstream_client:
        relay = Relay(parse_config(config, environ or {}), upstream_client, metrics, dns(table or {}))
        agent = Mux(agent_link, Role.AGENT, accept=relay, settings=SETTINGS)
        hub = FakeHub(gateway)
        async with (
            anyio.create_task_group() as tasks,
            httpx2.AsyncClient(transport=TunnelTransport(hub), timeout=5) as http,  # type: ignore[arg-type]
        ):
            tasks.start_soon(gateway.run)
            tasks.start_soon(agent.run)
            yield Tunnel(http, hub, metrics, seen)
            tasks.cancel_scope.cancel()


CRM = {
    "routes": [
        {
            "subdomain": "crm",
            "target": "http://crm.corp:9100/base",
            "headers": {"Authorization": "Bearer ${CRM_TOKEN}", "X-Tenant": "acme"},
        }
    ],
    "allow": ["10.0.0.5:9100"],
}


async def test_the_agent_adds_credentials_and_connects_to_the_checked_address() -> None:
    async with tunnel(CRM, table={"crm.corp": ["10.0.0.5"]}, environ={"CRM_TOKEN": "s3cret"}) as t:
        response = await t.http.get(
            f"http://crm.{DOMAIN}/mcp?x=1",
            headers={
                "Authorization": "Bearer from-the-gateway",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "1",
            },
        )
    assert response.status_code == 200 and response.text == "ok"
    (sent,) = t.upstream
    assert str(sent.url) == "http://10.0.0.5:9100/base/mcp?x=1"
    assert sent.headers["host"] == "crm.corp:9100"
    # The route's credential replaces whatever the gateway sent under the same name.
    assert sent.headers.get_list("authorization") == ["Bearer s3cret"]
    assert sent.headers["x-tenant"] == "acme"
    assert "x-hop" not in sent.headers


async def test_https_routes_keep_the_name_for_tls_while_connecting_to_the_address() -> None:
    config = {"routes": [{"subdomain": "crm", "target": "https://crm.corp"}], "allow": ["10.0.0.5:443"]}
    async with tunnel(config, table={"crm.corp": ["10.0.0.5"]}) as t:
        await t.http.get(f"http://crm.{DOMAIN}/")
    (sent,) = t.upstream
    assert str(sent.url) == "https://10.0.0.5/"
    assert sent.extensions["sni_hostname"] == "crm.corp"
    assert sent.headers["host"] == "crm.corp"


async def test_a_name_that_resolves_outside_the_allow_list_is_refused() -> None:
    async with tunnel(CRM, table={"crm.corp": ["192.168.7.7"]}, environ={"CRM_TOKEN": "s"}) as t:
        with pytest.raises(httpx2.ConnectError, match=r"resolves to 192\.168\.7\.7"):
            await t.http.get(f"http://crm.{DOMAIN}/mcp")
    assert t.upstream == []
    assert t.hub.errors == [ErrorCode.REFUSED]
    assert t.metrics.refused.get(reason="not_allowed") == 1


async def test_every_resolved_address_must_be_allowed() -> None:
    table = {"crm.corp": ["10.0.0.5", "203.0.113.9"]}
    async with tunnel(CRM, table=table, environ={"CRM_TOKEN": "s"}) as t:
        with pytest.raises(httpx2.ConnectError, match=r"203\.0\.113\.9"):
            await t.http.get(f"http://crm.{DOMAIN}/mcp")
    assert t.upstream == []


async def test_an_unresolvable_name_is_refused() -> None:
    async with tunnel(CRM, table={}, environ={"CRM_TOKEN": "s"}) as t:
        with pytest.raises(httpx2.ConnectError, match=r"cannot resolve crm\.corp"):
            await t.http.get(f"http://crm.{DOMAIN}/mcp")


async def test_an_unknown_subdomain_is_refused() -> None:
    async with tunnel(CRM, table={"crm.corp": ["10.0.0.5"]}, environ={"CRM_TOKEN": "s"}) as t:
        with pytest.raises(httpx2.ConnectError, match="no route for subdomain 'billing'"):
            await t.http.get(f"http://billing.{DOMAIN}/mcp")
    assert t.metrics.refused.get(reason="unknown") == 1


async def test_an_unreachable_upstream_is_a_connect_error() -> None:
    def down(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    async with tunnel(CRM, down, table={"crm.corp": ["10.0.0.5"]}, environ={"CRM_TOKEN": "s"}) as t:
        with pytest.raises(httpx2.ConnectError, match="upstream unreachable"):
            await t.http.get(f"http://crm.{DOMAIN}/mcp")
    assert t.hub.errors == [ErrorCode.UNREACHABLE]
    assert t.metrics.upstream_errors.get(route="crm") == 1


async def test_request_and_response_bodies_cross_intact() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: several credit windows each way

    def echo(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(201, content=request.content, headers={"x-length": str(len(request.content))})

    async with tunnel(CRM, echo, table={"crm.corp": ["10.0.0.5"]}, environ={"CRM_TOKEN": "s"}) as t:
        response = await t.http.post(f"http://crm.{DOMAIN}/upload", content=body)
    assert response.status_code == 201
    assert response.headers["x-length"] == str(len(body))
    assert response.content == body


async def test_a_streamed_request_body_of_unknown_length_crosses() -> None:
    async def parts() -> AsyncIterator[bytes]:
        for index in range(5):
            yield f"part-{index};".encode()

    def echo(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=request.content)

    async with tunnel(CRM, echo, table={"crm.corp": ["10.0.0.5"]}, environ={"CRM_TOKEN": "s"}) as t:
        response = await t.http.post(f"http://crm.{DOMAIN}/upload", content=parts())
    assert response.content == b"part-0;part-1;part-2;part-3;part-4;"


async def test_a_refused_stream_leaves_the_link_serving_others() -> None:
    async with tunnel(CRM, table={"crm.corp": ["10.0.0.5"]}, environ={"CRM_TOKEN": "s"}) as t:
        with pytest.raises(httpx2.ConnectError):
            await t.http.get(f"http://nope.{DOMAIN}/")
        assert (await t.http.get(f"http://crm.{DOMAIN}/")).status_code == 200
        assert not t.hub.mux.closed
