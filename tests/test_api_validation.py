"""The API refuses the allowed hosts and secret names the sandbox would refuse, and accepts
the ones it takes: both sides call ``sandbox_server.egress.validation``.

A value the API stored but the sandbox refused would leave a session whose tools can never
run, so each bad value is shown refused by the API (400 naming the field, through the SDK)
and by the sandbox's own parsers; each good value is shown accepted by both, the sandbox
reading what the gateway actually serves it.
"""

from __future__ import annotations

import secrets
from typing import Any

import anthropic
import httpx2
import pytest

from gateway.vault.egress import mint_token
from gateway.vault.keyring import KeyRing
from sandbox_server.egress.config import EgressSettings
from sandbox_server.egress.credentials import CredentialsError, parse_credentials
from sandbox_server.egress.policy import EgressMode
from sandbox_server.egress.validation import (
    InvalidHost,
    InvalidSecretName,
    check_allowed_host,
    check_secret_name,
)
from tests.conftest import gateway_data_dir
from tests.support.processes import ServerProcess

BAD_HOSTS = [
    "300.1.1.1",
    "foo.123",
    "1.2.3",
    "0x7f000001",
    "api.example.com:443",
    "[2001:db8::1]:443",
    "https://api.example.com",
    "api.example.com/v1",
    "user@api.example.com",
    "api.example.com?x=1",
    "*",
    "a.*.example.com",
    "*.192.0.2.1",
    "exa mple.com",
    "-bad.example.com",
    "example..com",
    "bücher.de",
    "fe80::1%eth0",
    "",
]
GOOD_HOSTS = [
    "api.example.com",
    "*.example.com",
    "API.Example.ORG.",
    "x-1.example",
    "192.0.2.1",
    "2001:db8::1",
]
BAD_SECRET_NAMES = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "PATH",
    "HOME",
    "BASH_ENV",
    "ENV",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "NODE_OPTIONS",
    "HTTP_PROXY",
    "https_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "1KEY",
    "MY-KEY",
    "MY KEY",
    "KEY$",
    "",
]
GOOD_SECRET_NAMES = ["STRIPE_KEY", "api_token", "_PRIVATE", "NODE_AUTH_TOKEN", "K"]


def _limited(hosts: list[str]) -> dict[str, Any]:
    return {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": hosts}}


def _variable(name: str = "API_TOKEN", hosts: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "environment_variable",
        "secret_name": name,
        "secret_value": "sv-" + secrets.token_hex(12),
        "networking": {"type": "limited", "allowed_hosts": hosts or ["api.example.com"]},
    }


@pytest.fixture
def vault_id(client: anthropic.Anthropic) -> str:
    return client.beta.vaults.create(display_name="validation").id


# Allowed hosts ------------------------------------------------------------------------------


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_an_environment_host_the_sandbox_refuses_is_a_400_naming_the_field(
    client: anthropic.Anthropic, host: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.environments.create(name="bad-host", config=_limited(["ok.example.com", host]))

    message = refused.value.body["error"]["message"]  # type: ignore[index]
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert message.startswith("config.networking.allowed_hosts: ")
    assert f"{host!r} (item 1)" in message
    # ... and the sandbox, given the same value, refuses it with the same function.
    with pytest.raises(InvalidHost):
        check_allowed_host(host)
    with pytest.raises(ValueError, match="--allow-host"):
        EgressSettings(mode=EgressMode.LIMITED, allow_hosts=(host,))


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_credential_host_the_sandbox_refuses_is_a_400_naming_the_field(
    client: anthropic.Anthropic, vault_id: str, host: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.vaults.credentials.create(vault_id, auth=_variable(hosts=[host]))  # type: ignore[arg-type]

    assert refused.value.body["error"]["message"].startswith("auth.networking.allowed_hosts: ")  # type: ignore[index]
    document = {"credentials": [{**_variable(hosts=[host]), "placeholder": "tether-ph-" + "a" * 32}]}
    with pytest.raises(CredentialsError, match="allowed_hosts"):
        parse_credentials(document)


def test_updates_are_held_to_the_same_host_rules(client: anthropic.Anthropic, vault_id: str) -> None:
    environment = client.beta.environments.create(name="update-hosts", config=_limited(["api.example.com"]))
    with pytest.raises(anthropic.BadRequestError, match=r"config\.networking\.allowed_hosts: '300\.1\.1\.1'"):
        client.beta.environments.update(environment.id, config=_limited(["300.1.1.1"]))
    assert client.beta.environments.retrieve(environment.id).config.networking.allowed_hosts == [  # type: ignore[union-attr]
        "api.example.com"
    ]

    credential = client.beta.vaults.credentials.create(vault_id, auth=_variable())  # type: ignore[arg-type]
    with pytest.raises(
        anthropic.BadRequestError, match=r"auth\.networking\.allowed_hosts: 'api\.example\.com:443'"
    ):
        client.beta.vaults.credentials.update(
            credential.id,
            vault_id=vault_id,
            auth={
                "type": "environment_variable",
                "networking": {"type": "limited", "allowed_hosts": ["api.example.com:443"]},
            },
        )


def test_valid_hosts_are_stored_as_sent_and_the_sandbox_takes_them(client: anthropic.Anthropic) -> None:
    environment = client.beta.environments.create(name="good-hosts", config=_limited(GOOD_HOSTS))

    stored = environment.config.networking.allowed_hosts  # type: ignore[union-attr]
    assert stored == GOOD_HOSTS
    EgressSettings(mode=EgressMode.LIMITED, allow_hosts=tuple(stored)).policy()
    updated = client.beta.environments.update(environment.id, config=_limited(["*.example.net", "192.0.2.7"]))
    assert updated.config.networking.allowed_hosts == ["*.example.net", "192.0.2.7"]  # type: ignore[union-attr]


# Secret names -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_SECRET_NAMES)
def test_a_secret_name_the_sandbox_refuses_is_a_400_naming_the_field(
    client: anthropic.Anthropic, vault_id: str, name: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.vaults.credentials.create(vault_id, auth=_variable(name))  # type: ignore[arg-type]

    assert refused.value.body["error"]["message"].startswith("auth.secret_name: ")  # type: ignore[index]
    with pytest.raises(InvalidSecretName):
        check_secret_name(name)
    document = {"credentials": [{**_variable(name), "placeholder": "tether-ph-" + "a" * 32}]}
    with pytest.raises(CredentialsError, match="secret_name"):
        parse_credentials(document)


def test_valid_credentials_reach_the_sandbox_as_stored(
    client: anthropic.Anthropic, gateway: ServerProcess, environment: Any
) -> None:
    vault = client.beta.vaults.create(display_name="good-names")
    for index, name in enumerate(GOOD_SECRET_NAMES):
        hosts = GOOD_HOSTS[index % len(GOOD_HOSTS) :] or GOOD_HOSTS
        client.beta.vaults.credentials.create(vault.id, auth=_variable(name, hosts))  # type: ignore[arg-type]
    agent = client.beta.agents.create(name="validation", model="m")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[vault.id])

    # The document the gateway serves the session's sandbox, parsed by the sandbox's own code.
    token = mint_token(KeyRing.load(gateway_data_dir(gateway) / "master.keys"), session.id)
    served = httpx2.get(
        gateway.url + "/v1/tether/egress/credentials",
        params={"session_id": session.id},
        headers={"authorization": f"Bearer {token}"},
    )
    assert served.status_code == 200
    vault_seen = parse_credentials(served.json())
    assert sorted(vault_seen.environment()) == sorted(GOOD_SECRET_NAMES)
