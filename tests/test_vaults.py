"""Vaults: encrypted credentials, injected by the gateway's MCP client on the last hop and
never returned, logged or shown to the model."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.beta import BetaManagedAgentsVault
from anthropic.types.beta.vaults import BetaManagedAgentsCredential

from gateway.vault.egress import mint_token
from gateway.vault.keyring import DecryptionFailed, KeyRing
from tests.conftest import Scripts, gateway_data_dir
from tests.support import oauth
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import mcp_agent, send_and_stream, strictly_valid, user_message

TokenEndpoint = oauth.TokenEndpoint
token_endpoint = oauth.token_endpoint


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


def _whoami_agent(client: anthropic.Anthropic, marker: str, upstream: ServerProcess) -> Any:
    return mcp_agent(client, marker, "ident", upstream.url + "/mcp", name="whoami")


def _whoami_script(scripts: Scripts) -> str:
    return scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "whoami", "input": {}}]},
            {"content": [{"type": "text", "text": "done"}]},
        ]
    )


def digest(header: str) -> str:
    return "sha256:" + hashlib.sha256(header.encode()).hexdigest()


def _raw(response: Any) -> Any:
    return response.http_response.json()


def test_vault_and_credential_lifecycle_never_returns_secrets(client: anthropic.Anthropic) -> None:
    secret = "sv-" + secrets.token_hex(12)
    vault = BetaManagedAgentsVault.model_validate(
        _raw(client.beta.vaults.with_raw_response.create(display_name="team", metadata={"team": "ops"}))
    )
    created = client.beta.vaults.credentials.with_raw_response.create(
        vault.id,
        auth={
            "type": "environment_variable",
            "secret_name": "STRIPE_KEY",
            "secret_value": secret,
            "networking": {"type": "limited", "allowed_hosts": ["api.stripe.com", "*.stripe.com"]},
        },
        display_name="stripe",
    )
    raw = _raw(created)
    credential = BetaManagedAgentsCredential.model_validate(raw)
    assert credential.auth.type == "environment_variable"
    assert raw["auth"]["injection_location"] == {"header": True, "body": False}
    assert secret not in json.dumps(raw)

    rotated = "sv-" + secrets.token_hex(12)
    updated = _raw(
        client.beta.vaults.credentials.with_raw_response.update(
            credential.id, vault_id=vault.id, auth={"type": "environment_variable", "secret_value": rotated}
        )
    )
    listed = _raw(client.beta.vaults.credentials.with_raw_response.list(vault.id))
    fetched = _raw(
        client.beta.vaults.credentials.with_raw_response.retrieve(credential.id, vault_id=vault.id)
    )
    for body in (updated, listed, fetched):
        assert secret not in json.dumps(body) and rotated not in json.dumps(body)
    assert [c["id"] for c in listed["data"]] == [credential.id]

    archived = client.beta.vaults.credentials.archive(credential.id, vault_id=vault.id)
    assert archived.archived_at is not None
    assert client.beta.vaults.credentials.delete(credential.id, vault_id=vault.id).id == credential.id
    assert client.beta.vaults.update(vault.id, display_name="renamed").display_name == "renamed"
    assert client.beta.vaults.archive(vault.id).archived_at is not None
    assert client.beta.vaults.delete(vault.id).id == vault.id
    with pytest.raises(anthropic.NotFoundError):
        client.beta.vaults.retrieve(vault.id)


def test_a_static_bearer_reaches_the_mcp_server_but_not_the_model_the_log_or_the_database(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    upstream: ServerProcess,
    gateway: ServerProcess,
) -> None:
    token = "tok-" + secrets.token_hex(16)
    vault = client.beta.vaults.create(display_name="mcp")
    client.beta.vaults.credentials.create(
        vault.id, auth={"type": "static_bearer", "mcp_server_url": upstream.url + "/mcp/", "token": token}
    )
    marker = _whoami_script(scripts)
    session = client.beta.sessions.create(
        agent=_whoami_agent(client, marker, upstream).id, environment_id=environment.id, vault_ids=[vault.id]
    )
    assert session.vault_ids == [vault.id]

    streamed = send_and_stream(client, session.id, [user_message("who am I?")])

    result = next(e for e in streamed if e.type == "agent.mcp_tool_result")
    assert result.content[0].text == digest(f"Bearer {token}")
    raw_events = _raw(client.beta.sessions.events.with_raw_response.list(session.id))
    strictly_valid(raw_events["data"])
    assert token not in json.dumps(raw_events)
    database = (gateway_data_dir(gateway) / "tether.db").read_bytes()
    wal = gateway_data_dir(gateway) / "tether.db-wal"
    assert token.encode() not in database + (wal.read_bytes() if wal.exists() else b"")
    assert not [line for line in gateway.output if token in line]
    model_saw = json.dumps(scripts.requests_for(marker)[0])
    assert token not in model_saw


def test_an_expired_oauth_token_is_refreshed_and_stored_encrypted(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    upstream: ServerProcess,
    token_endpoint: TokenEndpoint,
    gateway: ServerProcess,
) -> None:
    refresh_token, client_secret = "rt-" + secrets.token_hex(8), "cs-" + secrets.token_hex(8)
    vault = client.beta.vaults.create(display_name="oauth")
    credential = client.beta.vaults.credentials.create(
        vault.id,
        auth={
            "type": "mcp_oauth",
            "mcp_server_url": upstream.url + "/mcp",
            "access_token": "stale-token",
            "expires_at": datetime.now(UTC) - timedelta(minutes=5),
            "refresh": {
                "client_id": "tether-client",
                "refresh_token": refresh_token,
                "token_endpoint": token_endpoint.url,
                "token_endpoint_auth": {"type": "client_secret_basic", "client_secret": client_secret},
                "scope": "tools",
            },
        },
    )
    marker = _whoami_script(scripts)
    session = client.beta.sessions.create(
        agent=_whoami_agent(client, marker, upstream).id, environment_id=environment.id, vault_ids=[vault.id]
    )

    streamed = send_and_stream(client, session.id, [user_message("who am I?")])

    result = next(e for e in streamed if e.type == "agent.mcp_tool_result")
    assert result.content[0].text == digest("Bearer fresh-1")
    call = token_endpoint.calls[0]
    assert call["form"] == {"grant_type": "refresh_token", "refresh_token": refresh_token, "scope": "tools"}
    assert (
        call["authorization"]
        == "Basic " + base64.b64encode(f"tether-client:{client_secret}".encode()).decode()
    )
    refreshed = client.beta.vaults.credentials.retrieve(credential.id, vault_id=vault.id)
    assert refreshed.auth.expires_at is not None and refreshed.auth.expires_at > datetime.now(UTC)
    for secret in (refresh_token, client_secret, "fresh-1"):
        assert secret.encode() not in (gateway_data_dir(gateway) / "tether.db").read_bytes()


def test_a_failed_refresh_is_recorded_as_an_event_and_the_call_fails_cleanly(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    upstream: ServerProcess,
    token_endpoint: TokenEndpoint,
) -> None:
    token_endpoint.failing = True
    vault = client.beta.vaults.create(display_name="oauth-broken")
    client.beta.vaults.credentials.create(
        vault.id,
        auth={
            "type": "mcp_oauth",
            "mcp_server_url": upstream.url + "/mcp",
            "access_token": "stale",
            "expires_at": datetime.now(UTC) - timedelta(minutes=5),
            "refresh": {
                "client_id": "c",
                "refresh_token": "r",
                "token_endpoint": token_endpoint.url,
                "token_endpoint_auth": {"type": "none"},
            },
        },
    )
    marker = scripts.add([{"content": [{"type": "text", "text": "no tools for me"}]}])
    session = client.beta.sessions.create(
        agent=_whoami_agent(client, marker, upstream).id, environment_id=environment.id, vault_ids=[vault.id]
    )

    streamed = send_and_stream(client, session.id, [user_message("hi")])

    error = next(e for e in streamed if e.type == "session.error")
    assert error.error.type == "mcp_authentication_failed_error"
    assert error.error.mcp_server_name == "ident" and "HTTP 400" in error.error.message
    assert streamed[-1].stop_reason.type == "end_turn"


def test_sessions_cannot_attach_archived_vaults(client: anthropic.Anthropic, environment: Any) -> None:
    vault = client.beta.vaults.create(display_name="old")
    client.beta.vaults.archive(vault.id)
    agent = client.beta.agents.create(name="a", model="m")
    with pytest.raises(anthropic.BadRequestError, match="archived"):
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[vault.id])


def test_rotating_the_master_key_re_encrypts_and_a_running_gateway_keeps_working(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    upstream: ServerProcess,
    gateway: ServerProcess,
) -> None:
    token = "tok-" + secrets.token_hex(16)
    vault = client.beta.vaults.create(display_name="rotating")
    client.beta.vaults.credentials.create(
        vault.id, auth={"type": "static_bearer", "mcp_server_url": upstream.url + "/mcp", "token": token}
    )
    keys_file = gateway_data_dir(gateway) / "master.keys"
    before = json.loads(keys_file.read_text())

    rotated = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "vault",
            "rotate-key",
            "--data-dir",
            str(gateway_data_dir(gateway)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert rotated.returncode == 0, rotated.stdout + rotated.stderr
    after = json.loads(keys_file.read_text())
    assert after["active"] != before["active"] and list(after["keys"]) == [after["active"]]
    assert keys_file.stat().st_mode & 0o777 == 0o600
    marker = _whoami_script(scripts)
    session = client.beta.sessions.create(
        agent=_whoami_agent(client, marker, upstream).id, environment_id=environment.id, vault_ids=[vault.id]
    )
    streamed = send_and_stream(client, session.id, [user_message("who am I?")])
    result = next(e for e in streamed if e.type == "agent.mcp_tool_result")
    assert result.content[0].text == digest(f"Bearer {token}")


def test_ciphertexts_are_bound_to_their_record_and_tamper_evident(tmp_path: Path) -> None:
    ring = KeyRing.load(tmp_path / "master.keys")
    sealed = ring.encrypt(b"s3cret", "vcrd_a")
    assert ring.decrypt(sealed, "vcrd_a") == b"s3cret"
    assert b"s3cret" not in sealed.encode()
    with pytest.raises(DecryptionFailed):
        ring.decrypt(sealed, "vcrd_b")
    prefix, key_id, payload = sealed.split(":")
    flipped = base64.b64encode(
        bytes([base64.b64decode(payload)[0] ^ 1]) + base64.b64decode(payload)[1:]
    ).decode()
    with pytest.raises(DecryptionFailed):
        ring.decrypt(f"{prefix}:{key_id}:{flipped}", "vcrd_a")
    assert (tmp_path / "master.keys").stat().st_mode & 0o777 == 0o600


def test_the_egress_table_needs_a_live_token_for_that_session(
    client: anthropic.Anthropic, gateway: ServerProcess, environment: Any
) -> None:
    secret = "sv-" + secrets.token_hex(12)
    vault = client.beta.vaults.create(display_name="env")
    client.beta.vaults.credentials.create(
        vault.id,
        auth={
            "type": "environment_variable",
            "secret_name": "API_TOKEN",
            "secret_value": secret,
            "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]},
        },
    )
    agent = client.beta.agents.create(name="env-user", model="m")
    mine = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[vault.id])
    other = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    ring = KeyRing.load(gateway_data_dir(gateway) / "master.keys")
    url = gateway.url + "/v1/tether/egress/credentials"

    def fetch(token: str | None, session_id: str) -> httpx2.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx2.get(url, params={"session_id": session_id}, headers=headers)

    granted = fetch(mint_token(ring, mine.id), mine.id)
    assert granted.status_code == 200
    [entry] = granted.json()["credentials"]
    assert entry["secret_value"] == secret
    assert entry["networking"] == {"type": "limited", "allowed_hosts": ["api.example.com"]}
    assert entry["placeholder"].startswith("tether-ph-") and secret not in entry["placeholder"]
    assert fetch(mint_token(ring, mine.id), other.id).status_code == 401
    assert fetch(mint_token(ring, mine.id, now=time.time() - 3600), mine.id).status_code == 401
    assert (
        fetch(
            mint_token(KeyRing.load(gateway_data_dir(gateway) / "other.keys"), mine.id), mine.id
        ).status_code
        == 401
    )
    assert fetch(None, mine.id).status_code == 401
    # The API key is not a way in either.
    assert httpx2.get(url, headers={"x-api-key": client.api_key}).status_code == 401
