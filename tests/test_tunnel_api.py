"""``/v1/tunnels`` through the official SDK, and the agents' WebSocket handshake.

Responses are validated strictly from their raw JSON against the SDK's models
(``BetaTunnel``, ``BetaTunnelToken``): the SDK's own parsing is lenient and would hide a
missing field.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import pytest
from anthropic.types.beta import BetaTunnel, BetaTunnelToken
from pydantic import BaseModel
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.tunnels.tokens import PlainSealer
from tests.support.processes import ServerProcess
from tests.support.tunnel_agents import start_agent, write_config
from tests.support.tunnel_gateway import BASE_DOMAIN, TunnelGateway, running_tunnel_gateway, sdk_for

M = TypeVar("M", bound=BaseModel)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelGateway]:
    with running_tunnel_gateway(tmp_path_factory.mktemp("tunnel-api")) as running:
        yield running


@pytest.fixture
def client(gateway: TunnelGateway) -> Iterator[anthropic.Anthropic]:
    with sdk_for(gateway) as sdk:
        yield sdk


def strict(model: type[M], response: Any) -> M:
    return model.model_validate(response.http_response.json())


def create(client: anthropic.Anthropic, **params: Any) -> BetaTunnel:
    return strict(BetaTunnel, client.beta.tunnels.with_raw_response.create(**params))


def reveal(client: anthropic.Anthropic, tunnel_id: str) -> BetaTunnelToken:
    return strict(BetaTunnelToken, client.beta.tunnels.with_raw_response.reveal_token(tunnel_id))


def dial(
    gateway: TunnelGateway, token: str | None, agent_id: str = "probe", **extra: str
) -> ClientConnection:
    headers = {"Tether-Tunnel-Protocol": "1", "Tether-Agent-Id": agent_id, "Tether-Agent-Slot": "0", **extra}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return connect(gateway.connect_url, additional_headers=headers, open_timeout=10, ping_interval=None)


def close_code(connection: ClientConnection) -> int | None:
    """Block until the gateway closes the connection; its close code."""
    with connection, pytest.raises(ConnectionClosed) as closed:
        connection.recv(timeout=30)
    return closed.value.rcvd.code if closed.value.rcvd else None


def test_create_assigns_a_unique_domain_under_the_base_domain(client: anthropic.Anthropic) -> None:
    first = create(client, display_name="crm")
    second = create(client)
    assert first.id.startswith("tnl_") and first.type == "tunnel"
    assert first.display_name == "crm" and second.display_name is None
    assert first.archived_at is None
    for tunnel in (first, second):
        label = tunnel.domain.removesuffix("." + BASE_DOMAIN)
        assert label != tunnel.domain and label.isalnum() and label.islower()
    assert first.domain != second.domain


def test_retrieve_returns_the_created_tunnel(client: anthropic.Anthropic) -> None:
    tunnel = create(client, display_name="retrieve-me")
    fetched = strict(BetaTunnel, client.beta.tunnels.with_raw_response.retrieve(tunnel.id))
    assert fetched == tunnel


def test_list_pages_newest_first_and_hides_archived(client: anthropic.Anthropic) -> None:
    made = [create(client, display_name=f"page-{index}") for index in range(3)]
    client.beta.tunnels.archive(made[1].id)
    body = client.beta.tunnels.with_raw_response.list(limit=1).http_response.json()
    assert set(body) == {"data", "next_page"}
    assert [BetaTunnel.model_validate(item).id for item in body["data"]] == [made[2].id]
    assert body["next_page"]
    visible = [t.id for t in client.beta.tunnels.list(limit=2)]
    assert made[1].id not in visible and made[2].id in visible and made[0].id in visible
    everything = [t.id for t in client.beta.tunnels.list(include_archived=True, limit=1000)]
    assert everything.index(made[2].id) < everything.index(made[1].id) < everything.index(made[0].id)


def test_archive_is_idempotent_and_keeps_the_domain(client: anthropic.Anthropic) -> None:
    tunnel = create(client)
    archived = strict(BetaTunnel, client.beta.tunnels.with_raw_response.archive(tunnel.id))
    again = strict(BetaTunnel, client.beta.tunnels.with_raw_response.archive(tunnel.id))
    assert archived.archived_at is not None
    assert again == archived
    assert archived.domain == tunnel.domain


def test_reveal_returns_the_current_token_until_it_is_rotated(client: anthropic.Anthropic) -> None:
    tunnel = create(client)
    token = reveal(client, tunnel.id)
    assert token.type == "tunnel_token" and token.id.startswith("tnltok_")
    assert reveal(client, tunnel.id) == token
    rotated = strict(
        BetaTunnelToken, client.beta.tunnels.with_raw_response.rotate_token(tunnel.id, reason="laptop lost")
    )
    assert rotated.id != token.id and rotated.tunnel_token != token.tunnel_token
    assert reveal(client, tunnel.id) == rotated


def test_rotation_reason_is_recorded_without_the_token(
    client: anthropic.Anthropic, gateway: TunnelGateway
) -> None:
    tunnel = create(client)
    rotated = client.beta.tunnels.rotate_token(tunnel.id, reason="quarterly rotation")
    assert "quarterly rotation" in gateway.logs.text
    assert rotated.tunnel_token not in gateway.logs.text


def test_tokens_are_stored_as_a_digest_and_a_sealed_copy(
    client: anthropic.Anthropic, gateway: TunnelGateway
) -> None:
    if isinstance(gateway.hub.sealer, PlainSealer):
        pytest.skip("the gateway under test has no key ring to seal tokens with")
    tunnel = create(client)
    token = reveal(client, tunnel.id).tunnel_token
    with sqlite3.connect(Path(gateway.data_dir) / "tether.db") as database:
        dump = "\n".join(database.iterdump())
    assert token not in dump
    assert hashlib.sha256(token.encode()).hexdigest() in dump


@pytest.mark.parametrize(
    ("call", "status", "error_type"),
    [
        (lambda c: c.beta.tunnels.retrieve("tnl_missing"), 404, "not_found_error"),
        (lambda c: c.beta.tunnels.archive("tnl_missing"), 404, "not_found_error"),
        (lambda c: c.beta.tunnels.reveal_token("tnl_missing"), 404, "not_found_error"),
        (lambda c: c.beta.tunnels.rotate_token("tnl_missing"), 404, "not_found_error"),
        (lambda c: c.beta.tunnels.create(display_name=""), 400, "invalid_request_error"),
        (lambda c: c.beta.tunnels.create(display_name="x" * 256), 400, "invalid_request_error"),
        (
            lambda c: c.beta.tunnels.create(extra_body={"domain": "mine.example"}),
            400,
            "invalid_request_error",
        ),
        (lambda c: c.beta.tunnels.list(limit=1001), 400, "invalid_request_error"),
        (lambda c: c.beta.tunnels.list(page="not-a-cursor"), 400, "invalid_request_error"),
    ],
)
def test_errors_are_shaped_like_the_anthropic_api(
    client: anthropic.Anthropic, call: Any, status: int, error_type: str
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        call(client)
    assert caught.value.status_code == status
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["error"]["message"]


def test_an_archived_tunnel_cannot_reveal_or_rotate_its_token(client: anthropic.Anthropic) -> None:
    tunnel = create(client)
    client.beta.tunnels.archive(tunnel.id)
    for call in (client.beta.tunnels.reveal_token, client.beta.tunnels.rotate_token):
        with pytest.raises(anthropic.BadRequestError, match="archived"):
            call(tunnel.id)


def test_tunnel_endpoints_require_an_api_key(gateway: TunnelGateway) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key="wrong", max_retries=0) as sdk:
        with pytest.raises(anthropic.AuthenticationError):
            sdk.beta.tunnels.list()


def test_connect_refuses_an_unknown_token_with_4401(gateway: TunnelGateway) -> None:
    assert close_code(dial(gateway, "tether_tnl_not-a-real-token")) == 4401
    assert close_code(dial(gateway, None)) == 4401


def test_connect_refuses_an_archived_tunnel_with_4403(
    client: anthropic.Anthropic, gateway: TunnelGateway
) -> None:
    tunnel = create(client)
    token = reveal(client, tunnel.id).tunnel_token
    client.beta.tunnels.archive(tunnel.id)
    assert close_code(dial(gateway, token)) == 4403


def test_connect_refuses_an_unknown_protocol_version_with_4400(
    client: anthropic.Anthropic, gateway: TunnelGateway
) -> None:
    token = reveal(client, create(client).id).tunnel_token
    assert close_code(dial(gateway, token, **{"Tether-Tunnel-Protocol": "99"})) == 4400


def test_a_re_registering_agent_replaces_its_stale_connection(
    client: anthropic.Anthropic, gateway: TunnelGateway
) -> None:
    tunnel = create(client)
    token = reveal(client, tunnel.id).tunnel_token
    stale = dial(gateway, token, agent_id="same-agent")
    gateway.call(gateway.hub.wait_for_connections, tunnel.id, 1)
    with dial(gateway, token, agent_id="same-agent"):
        assert close_code(stale) == 4409
        gateway.call(gateway.hub.wait_for_connections, tunnel.id, 1)
        assert gateway.hub.counters.replaced_total >= 1


def test_rotation_drops_connected_agents_and_the_old_token_is_refused(
    client: anthropic.Anthropic, gateway: TunnelGateway, tmp_path: Path
) -> None:
    tunnel = create(client)
    old = reveal(client, tunnel.id).tunnel_token
    config = write_config(tmp_path / "tunnel.yaml", [{"subdomain": "crm", "target": "http://127.0.0.1:9"}])
    agent: ServerProcess = start_agent(gateway.url, old, config, "rotating-agent", connections=2)
    try:
        gateway.call(gateway.hub.wait_for_connections, tunnel.id, 2)
        new = client.beta.tunnels.rotate_token(tunnel.id, reason="test").tunnel_token
        # Dropped at once (not at the next ping), and the agent's redials with the old
        # token are refused, so the tunnel stays without connections.
        gateway.call(gateway.hub.wait_for_connections, tunnel.id, 0)
        assert close_code(dial(gateway, old)) == 4401
        with dial(gateway, new, agent_id="with-new-token"):
            gateway.call(gateway.hub.wait_for_connections, tunnel.id, 1)
    finally:
        agent.stop()
    assert old not in gateway.logs.text and new not in gateway.logs.text
