"""Keys with roles, through the SDK's ``organization.api_keys`` and a real gateway.

Each role is tried against what it may and may not do; refusals are the API's 403
``permission_error`` (a revoked or unknown key is a 401), and the token is returned once and
stored only as a salted hash: it appears nowhere in the database file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.beta.organization.beta_api_key import BetaAPIKey

from gateway import cli
from gateway.resources.api_keys import status_of
from tests.conftest import gateway_data_dir
from tests.support.processes import ServerProcess

KEYS = "/v1/organizations/api_keys"


def _create(gateway: ServerProcess, admin_key: str, **fields: Any) -> dict[str, Any]:
    response = httpx2.post(gateway.url + KEYS, headers={"x-api-key": admin_key}, json=fields, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _as(gateway: ServerProcess, token: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=token, max_retries=0, timeout=30)


@pytest.fixture
def keyed(gateway: ServerProcess, api_key: str) -> Iterator[Any]:
    """Creates keys with ``keyed(role, ...)`` and returns ``(record, sdk client using it)``."""
    clients: list[anthropic.Anthropic] = []

    def make(role: str, **fields: Any) -> tuple[dict[str, Any], anthropic.Anthropic]:
        created = _create(gateway, api_key, name=f"{role} key", role=role, **fields)
        clients.append(_as(gateway, created["key"]))
        return created, clients[-1]

    yield make
    for client in clients:
        client.close()


def test_a_created_key_is_shown_once_parses_as_the_sdks_type_and_is_stored_only_hashed(
    gateway: ServerProcess, client: anthropic.Anthropic, api_key: str
) -> None:
    created = _create(gateway, api_key, name="ci", role="developer")
    token = created.pop("key")
    assert BetaAPIKey.model_validate(created, strict=False).status == "active"
    assert created["role"] == "developer" and created["last_used_at"] is None
    assert not [name for name in created if name.startswith("_")]

    retrieved = client.beta.organization.api_keys.retrieve(created["id"])
    assert isinstance(retrieved, BetaAPIKey) and retrieved.name == "ci"
    assert "key" not in retrieved.model_dump() and token not in str(retrieved.model_dump())
    listed = client.beta.organization.api_keys.list(limit=1000)
    assert created["id"] in [key.id for key in listed.data]

    with _as(gateway, token) as developer:
        developer.beta.agents.list()
    assert client.beta.organization.api_keys.retrieve(created["id"]).model_dump()["last_used_at"]

    secret = token.rsplit(".", 1)[1]
    database = (gateway_data_dir(gateway) / "tether.db").read_bytes()
    for suffix in ("", "-wal"):
        path = gateway_data_dir(gateway) / f"tether.db{suffix}"
        if path.exists():
            database += path.read_bytes()
    assert secret.encode() not in database
    assert created["id"].encode() in database


def test_each_role_reaches_only_its_own_surface(
    client: anthropic.Anthropic, keyed: Any, scripts: Any
) -> None:
    agent = client.beta.agents.create(name="roles", model="claude-sonnet-4-6", system=scripts.add([]))
    environment = client.beta.environments.create(name="roles")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    _, developer = keyed("developer")
    built = developer.beta.agents.create(name="by developer", model="claude-sonnet-4-6")
    own = developer.beta.sessions.create(agent=built.id, environment_id=environment.id)
    vault = client.beta.vaults.create(display_name="team secrets")
    with pytest.raises(anthropic.PermissionDeniedError, match="may not attach vaults"):
        developer.beta.sessions.create(agent=built.id, environment_id=environment.id, vault_ids=[vault.id])
    with pytest.raises(anthropic.PermissionDeniedError, match="may not attach vaults"):
        developer.beta.sessions.update(own.id, vault_ids=[vault.id])
    assert client.beta.sessions.retrieve(own.id).vault_ids == []
    for refused in (
        developer.beta.vaults.list,
        developer.beta.tunnels.list,
        developer.beta.organization.api_keys.list,
    ):
        with pytest.raises(anthropic.PermissionDeniedError, match=r"role \(developer\)"):
            refused()

    _, reader = keyed("reader")
    assert [a.id for a in reader.beta.agents.list(limit=100).data if a.id == agent.id] == [agent.id]
    reader.beta.sessions.retrieve(session.id)
    with pytest.raises(anthropic.PermissionDeniedError, match=r"does not allow POST /v1/agents"):
        reader.beta.agents.create(name="nope", model="claude-sonnet-4-6")
    with pytest.raises(anthropic.PermissionDeniedError):
        reader.beta.sessions.events.send(session.id, events=[_user_message("hi")])  # type: ignore[list-item]

    _, operator = keyed("operator")
    operator.beta.sessions.events.list(session.id)
    with pytest.raises(
        anthropic.PermissionDeniedError, match=r"may send only user\.interrupt, user\.tool_confirmation"
    ):
        operator.beta.sessions.events.send(session.id, events=[_user_message("hi")])  # type: ignore[list-item]
    operator.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
    assert operator.beta.sessions.archive(session.id).archived_at is not None
    with pytest.raises(anthropic.PermissionDeniedError):
        operator.beta.agents.create(name="nope", model="claude-sonnet-4-6")
    assert all(e.type != "user.message" for e in client.beta.sessions.events.list(session.id).data)


def test_a_worker_key_serves_one_self_hosted_environment_and_nothing_else(
    client: anthropic.Anthropic, keyed: Any
) -> None:
    onprem = client.beta.environments.create(name="site", config={"type": "self_hosted"})
    other = client.beta.environments.create(name="other", config={"type": "self_hosted"})
    tunnel = client.beta.tunnels.create(display_name="site")
    record, worker = keyed("worker", environment_id=onprem.id, tunnel_id=tunnel.id)
    assert record["environment_id"] == onprem.id

    assert worker.beta.environments.work.poll(onprem.id, block_ms=None) is None
    assert worker.beta.environments.retrieve(onprem.id).id == onprem.id
    assert worker.beta.tunnels.retrieve(tunnel.id).id == tunnel.id
    for refused in (
        lambda: worker.beta.environments.work.poll(other.id, block_ms=None),
        lambda: worker.beta.environments.retrieve(other.id),
        lambda: worker.beta.sessions.list(),
        lambda: worker.beta.agents.list(),
        lambda: worker.beta.tunnels.reveal_token(tunnel.id),
        lambda: worker.beta.vaults.list(),
    ):
        with pytest.raises(anthropic.PermissionDeniedError, match=f"worker for {onprem.id}"):
            refused()
    whoami = worker.get("/v1/tether/whoami", cast_to=object)
    assert whoami == {
        "type": "api_key_principal",
        "role": "worker",
        "key_id": record["id"],
        "environment_id": onprem.id,
        "tunnel_id": tunnel.id,
    }


def test_revoked_and_deactivated_keys_are_refused_at_once(client: anthropic.Anthropic, keyed: Any) -> None:
    revoked, revoked_client = keyed("developer")
    paused, paused_client = keyed("reader")
    revoked_client.beta.agents.list()
    paused_client.beta.agents.list()

    assert client.beta.organization.api_keys.update(revoked["id"], status="archived").status == "archived"
    assert client.beta.organization.api_keys.update(paused["id"], status="inactive").status == "inactive"
    for refused in (revoked_client, paused_client):
        with pytest.raises(anthropic.AuthenticationError, match="invalid x-api-key"):
            refused.beta.agents.list()
    active = client.beta.organization.api_keys.list(status="active", limit=1000).data
    assert revoked["id"] not in [k.id for k in active] and paused["id"] not in [k.id for k in active]

    assert client.beta.organization.api_keys.update(paused["id"], status="active").status == "active"
    paused_client.beta.agents.list()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"name": "w", "role": "worker"}, "environment_id"),
        ({"name": "d", "role": "developer", "environment_id": "env_x"}, "worker keys"),
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "", "role": "reader"}, "name"),
        ({"name": "w", "role": "worker", "environment_id": "env_missing"}, "no environment env_missing"),
        ({"name": "e", "role": "reader", "expires_at": "2020-01-01T00:00:00Z"}, "future"),
        ({"name": "e", "role": "reader", "secret": "mine"}, "secret"),
        ({"name": "w", "role": "worker", "environment_id": "env_x", "agent_ids": ["agent_1"]}, "agent_ids"),
        ({"name": "d", "role": "developer", "agent_ids": []}, "agent_ids"),
    ],
)
def test_bad_key_requests_are_400s_naming_the_field(
    gateway: ServerProcess, api_key: str, fields: dict[str, Any], named: str
) -> None:
    response = httpx2.post(gateway.url + KEYS, headers={"x-api-key": api_key}, json=fields, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and named in error["message"]


def test_a_worker_key_for_a_cloud_environment_is_refused(
    gateway: ServerProcess, api_key: str, client: anthropic.Anthropic
) -> None:
    cloud = client.beta.environments.create(name="cloud")
    response = httpx2.post(
        gateway.url + KEYS,
        headers={"x-api-key": api_key},
        json={"name": "w", "role": "worker", "environment_id": cloud.id},
        timeout=30,
    )
    assert response.status_code == 400 and "self_hosted" in response.json()["error"]["message"]


def test_a_key_limited_to_address_ranges_works_only_from_them(
    gateway: ServerProcess, api_key: str, client: anthropic.Anthropic
) -> None:
    here = _create(gateway, api_key, name="loopback", role="reader", allowed_ips=["127.0.0.0/8", "::1/128"])
    elsewhere = _create(gateway, api_key, name="office", role="reader", allowed_ips=["10.1.0.0/16"])
    assert here["allowed_ips"] == ["127.0.0.0/8", "::1/128"]

    with _as(gateway, here["key"]) as allowed:
        allowed.beta.agents.list()
    with _as(gateway, elsewhere["key"]) as refused, pytest.raises(anthropic.AuthenticationError):
        refused.beta.agents.list()
    assert client.beta.organization.api_keys.retrieve(elsewhere["id"]).model_dump()["last_used_at"] is None
    response = httpx2.post(
        gateway.url + KEYS,
        headers={"x-api-key": api_key},
        json={"name": "bad", "role": "reader", "allowed_ips": ["10.0.0.300/8"]},
        timeout=30,
    )
    assert response.status_code == 400 and "not an address range" in response.json()["error"]["message"]


def test_a_key_limited_to_one_agent_starts_and_changes_only_that_agents_sessions(
    client: anthropic.Anthropic, keyed: Any
) -> None:
    mine = client.beta.agents.create(name="ci target", model="claude-sonnet-4-6")
    other = client.beta.agents.create(name="someone else's", model="claude-sonnet-4-6")
    environment = client.beta.environments.create(name="ci")
    record, ci = keyed("developer", agent_ids=[mine.id])
    assert record["agent_ids"] == [mine.id]

    started = ci.beta.sessions.create(agent=mine.id, environment_id=environment.id)
    assert started.agent.id == mine.id
    ci.beta.sessions.create(
        agent={"type": "agent", "id": mine.id, "version": 1}, environment_id=environment.id
    )
    assert ci.beta.agents.update(mine.id, version=1, description="tuned by CI").version == 2
    with pytest.raises(anthropic.PermissionDeniedError, match=f"may start sessions of {mine.id} only"):
        ci.beta.sessions.create(agent=other.id, environment_id=environment.id)
    with pytest.raises(anthropic.PermissionDeniedError):
        ci.beta.agents.update(other.id, version=1, description="not mine")
    with pytest.raises(anthropic.PermissionDeniedError):
        ci.beta.agents.create(name="new", model="claude-sonnet-4-6")
    assert client.beta.agents.retrieve(other.id).version == 1


def test_a_forged_token_with_a_real_key_id_is_refused(gateway: ServerProcess, keyed: Any) -> None:
    record, _ = keyed("admin")
    forged = f"tk1.{record['id']}.{'A' * 43}"
    with _as(gateway, forged) as client, pytest.raises(anthropic.AuthenticationError):
        client.beta.agents.list()


def test_an_expired_key_reports_expired() -> None:
    now = datetime.now(UTC)
    body = {"status": "active", "expires_at": (now + timedelta(hours=1)).isoformat()}
    assert status_of(body, now) == "active"
    assert status_of(body, now + timedelta(hours=2)) == "expired"
    assert status_of({**body, "status": "inactive"}, now + timedelta(hours=2)) == "inactive"


def _user_message(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def _cli(gateway: ServerProcess, key: str, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """``tether ARGV --json`` against the gateway: its exit status and parsed output."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--json", "--gateway", gateway.url, "--api-key", key])
    out = capsys.readouterr()
    assert exited.value.code in (0, None), out.err
    try:
        return json.loads(out.out)  # one item, indented
    except json.JSONDecodeError:
        return [json.loads(line) for line in out.out.splitlines() if line.strip()]  # a list


def test_the_cli_creates_lists_rotates_and_revokes_a_worker_key(
    gateway: ServerProcess, api_key: str, client: anthropic.Anthropic, capsys: pytest.CaptureFixture[str]
) -> None:
    onprem = client.beta.environments.create(name="cli site", config={"type": "self_hosted"})
    created = _cli(
        gateway,
        api_key,
        capsys,
        "keys",
        "create",
        "--name",
        "site worker",
        "--role",
        "worker",
        "--environment",
        onprem.id,
        "--allow-ip",
        "127.0.0.0/8",
    )
    first = created["key"]
    with _as(gateway, first) as worker:
        assert worker.beta.environments.work.poll(onprem.id, block_ms=None) is None
    found = _cli(gateway, api_key, capsys, "keys", "list", "--limit", "1000")
    listed = found if isinstance(found, list) else [found]
    assert next(k for k in listed if k["id"] == created["id"])["last_used_at"]
    assert all("key" not in k for k in listed)

    rotated = _cli(gateway, api_key, capsys, "keys", "rotate", created["id"])
    assert rotated["id"] != created["id"] and rotated["environment_id"] == onprem.id
    assert rotated["role"] == "worker" and rotated["name"] == "site worker"
    assert rotated["allowed_ips"] == ["127.0.0.0/8"]
    with _as(gateway, first) as old, pytest.raises(anthropic.AuthenticationError):
        old.beta.environments.work.poll(onprem.id, block_ms=None)
    with _as(gateway, rotated["key"]) as new:
        assert new.beta.environments.work.poll(onprem.id, block_ms=None) is None

    revoked = _cli(gateway, api_key, capsys, "keys", "revoke", rotated["id"])
    assert revoked["status"] == "archived"
    with _as(gateway, rotated["key"]) as new, pytest.raises(anthropic.AuthenticationError):
        new.beta.environments.work.poll(onprem.id, block_ms=None)
