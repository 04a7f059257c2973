"""Tunnel certificates through the official SDK, and what they do: TLS on the tunnel's last hop.

``client.beta.tunnels.certificates`` create/list/retrieve/archive with every refusal, and end
to end: a real ``python -m tunnel_agent`` reaches an on-prem MCP server that speaks HTTPS only,
with a certificate from a CA made here. The call works when that CA is registered on the
tunnel and fails, naming the untrusted certificate, when it is not, when only another CA is,
and after it is archived. Responses are validated strictly from their raw JSON.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest
from anthropic.types.beta.tunnels import BetaTunnelCertificate
from anyio.streams.buffered import BufferedByteReceiveStream
from cryptography.hazmat.primitives import serialization

from tests.support.processes import ServerProcess, start_server
from tests.support.tunnel_agents import call_tool, start_agent, text_of, write_config
from tests.support.tunnel_gateway import FAST_PINGS, TunnelGateway, running_tunnel_gateway, sdk_for
from tests.support.tunnel_onprem import fingerprint
from tests.support.tunnel_tls import Authority, make_certificate
from tunnel_agent.httpwire import MAX_TRUST, HeadError, RequestHead, encode_request, read_request
from tunnel_agent.trust import BadTrust, pinned_context

CRM_SECRET = "crm-secret-" + os.urandom(8).hex()
FIELDS = set(BetaTunnelCertificate.model_fields)


# Fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TunnelGateway]:
    with running_tunnel_gateway(tmp_path_factory.mktemp("tunnel-certificates"), **FAST_PINGS) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: TunnelGateway) -> Iterator[anthropic.Anthropic]:
    with sdk_for(gateway) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def corp_ca() -> Authority:
    return make_certificate("Corp Root CA")


@pytest.fixture(scope="module")
def other_ca() -> Authority:
    return make_certificate("Some Other CA")


@pytest.fixture
def tunnel_id(client: anthropic.Anthropic) -> str:
    return client.beta.tunnels.create(display_name="certificates").id


def register(client: anthropic.Anthropic, tunnel_id: str, pem: str) -> BetaTunnelCertificate:
    response = client.beta.tunnels.certificates.with_raw_response.create(tunnel_id, ca_certificate_pem=pem)
    return strict(response.http_response.json())


def strict(body: Any) -> BetaTunnelCertificate:
    assert set(body) == FIELDS, "exactly the SDK's fields: no stored PEM or other private field"
    return BetaTunnelCertificate.model_validate(body)


def error_of(raised: pytest.ExceptionInfo[anthropic.APIStatusError]) -> tuple[int, str, str]:
    body = raised.value.response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    return raised.value.status_code, body["error"]["type"], body["error"]["message"]


# The API ------------------------------------------------------------------------------------


def test_create_returns_the_certificate_with_its_der_fingerprint_and_expiry(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority
) -> None:
    certificate = register(client, tunnel_id, corp_ca.pem)
    assert certificate.id.startswith("tcrt_") and certificate.type == "tunnel_certificate"
    assert certificate.tunnel_id == tunnel_id
    assert certificate.fingerprint == corp_ca.sha256
    assert certificate.expires_at == corp_ca.certificate.not_valid_after_utc
    assert certificate.archived_at is None
    assert abs(certificate.created_at - datetime.now(UTC)) < timedelta(minutes=1)


def test_a_ca_without_a_defined_expiry_has_a_null_expires_at(
    client: anthropic.Anthropic, tunnel_id: str
) -> None:
    forever = make_certificate("Forever CA", not_after=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert register(client, tunnel_id, forever.pem).expires_at is None


def test_retrieve_returns_the_created_certificate(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority
) -> None:
    created = register(client, tunnel_id, corp_ca.pem)
    raw = client.beta.tunnels.certificates.with_raw_response.retrieve(created.id, tunnel_id=tunnel_id)
    assert strict(raw.http_response.json()) == created


def test_list_pages_newest_first_and_hides_archived(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority, other_ca: Authority
) -> None:
    first = register(client, tunnel_id, corp_ca.pem)
    second = register(client, tunnel_id, other_ca.pem)
    client.beta.tunnels.certificates.archive(first.id, tunnel_id=tunnel_id)
    third = register(client, tunnel_id, corp_ca.pem)

    body = client.beta.tunnels.certificates.with_raw_response.list(tunnel_id, limit=1).http_response.json()
    assert set(body) == {"data", "next_page"} and body["next_page"]
    assert [strict(item).id for item in body["data"]] == [third.id]
    visible = [c.id for c in client.beta.tunnels.certificates.list(tunnel_id, limit=1)]
    assert visible == [third.id, second.id]
    everything = client.beta.tunnels.certificates.list(tunnel_id, include_archived=True, limit=1000)
    assert [c.id for c in everything] == [third.id, second.id, first.id]


def test_archive_is_idempotent_and_keeps_the_record(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority
) -> None:
    created = register(client, tunnel_id, corp_ca.pem)
    archive = client.beta.tunnels.certificates.with_raw_response.archive
    archived = strict(archive(created.id, tunnel_id=tunnel_id).http_response.json())
    again = strict(archive(created.id, tunnel_id=tunnel_id).http_response.json())
    assert archived.archived_at is not None and again == archived
    assert archived.model_dump(exclude={"archived_at"}) == created.model_dump(exclude={"archived_at"})
    kept = client.beta.tunnels.certificates.retrieve(created.id, tunnel_id=tunnel_id)
    assert kept.archived_at == archived.archived_at


def test_the_same_ca_twice_is_a_conflict_until_the_first_is_archived(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority
) -> None:
    first = register(client, tunnel_id, corp_ca.pem)
    with pytest.raises(anthropic.ConflictError) as raised:
        register(client, tunnel_id, "# the same CA, other text around it\n" + corp_ca.pem)
    status, kind, message = error_of(raised)
    assert (status, kind) == (409, "conflict_error") and first.id in message
    client.beta.tunnels.certificates.archive(first.id, tunnel_id=tunnel_id)
    assert register(client, tunnel_id, corp_ca.pem).fingerprint == first.fingerprint
    # Another tunnel may trust the same CA.
    other_tunnel = client.beta.tunnels.create().id
    assert register(client, other_tunnel, corp_ca.pem).tunnel_id == other_tunnel


def test_a_tunnel_trusts_at_most_two_certificates_at_once(
    client: anthropic.Anthropic, tunnel_id: str
) -> None:
    held = [register(client, tunnel_id, make_certificate(f"CA {n}").pem) for n in range(2)]
    with pytest.raises(anthropic.ConflictError) as raised:
        register(client, tunnel_id, make_certificate("CA 3").pem)
    assert "archive one" in error_of(raised)[2]
    assert [c.id for c in client.beta.tunnels.certificates.list(tunnel_id, include_archived=True)] == [
        held[1].id,
        held[0].id,
    ], "the refused certificate left no record"
    client.beta.tunnels.certificates.archive(held[0].id, tunnel_id=tunnel_id)
    register(client, tunnel_id, make_certificate("CA 3").pem)


@pytest.mark.parametrize("distinct", [True, False], ids=["four CAs", "one CA four times"])
def test_concurrent_creates_never_pass_the_limits_together(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority, distinct: bool
) -> None:
    """Each create is checked after its insert, against those inserted before it."""
    pems = [make_certificate(f"CA {n}").pem if distinct else corp_ca.pem for n in range(4)]

    def attempt(pem: str) -> str | None:
        try:
            return client.beta.tunnels.certificates.create(tunnel_id, ca_certificate_pem=pem).id
        except anthropic.ConflictError:
            return None

    with ThreadPoolExecutor(len(pems)) as pool:
        created = [made for made in pool.map(attempt, pems) if made is not None]
    assert len(created) == (2 if distinct else 1)
    listed = client.beta.tunnels.certificates.list(tunnel_id, include_archived=True)
    assert sorted(c.id for c in listed) == sorted(created)


def _garbled(pem: str) -> str:
    lines = pem.splitlines()
    return "\n".join([lines[0], "not base64 at all!", *lines[2:]])


REFUSALS: dict[str, tuple[Any, str]] = {
    "not PEM": (lambda ca: "hello", r"is not PEM"),
    "DER bytes as text": (
        lambda ca: ca.certificate.public_bytes(serialization.Encoding.DER).hex(),
        r"not PEM",
    ),
    "two certificates": (
        lambda ca: ca.pem + make_certificate("Second").pem,
        r"exactly one certificate, found 2",
    ),
    "a private key with it": (lambda ca: ca.pem + ca.key_pem, r"private-key material"),
    "an RSA-style key block": (
        lambda ca: ca.pem + "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        r"private-key material",
    ),
    "a key block in lower case": (
        lambda ca: ca.pem + ca.key_pem.replace("PRIVATE KEY", "private key"),
        r"private-key material",
    ),
    "a public key": (
        lambda ca: (
            ca.key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        ),
        r"only a CERTIFICATE block, not PUBLIC KEY",
    ),
    "a garbled certificate": (lambda ca: _garbled(ca.pem), r"not a valid X\.509 certificate"),
    "a leaf certificate": (lambda ca: make_certificate("leaf", issuer=ca, ca=False).pem, r"CA=false"),
    "no basicConstraints": (lambda ca: make_certificate("old", ca=None).pem, r"no basicConstraints"),
    "keyUsage without keyCertSign": (
        lambda ca: make_certificate("no-sign", key_cert_sign=False).pem,
        r"keyUsage lacks keyCertSign",
    ),
    "an expired CA": (lambda ca: make_certificate("expired", days=(-30, -1)).pem, r"expired at 20\d\d-"),
    "more than 8 KB": (lambda ca: ca.pem + "#" * 8192, r"larger than 8192 bytes"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_is_a_400_naming_its_reason(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority, case: str
) -> None:
    make, reason = REFUSALS[case]
    text = make(corp_ca)
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.beta.tunnels.certificates.create(tunnel_id, ca_certificate_pem=text)
    status, kind, message = error_of(raised)
    assert (status, kind) == (400, "invalid_request_error")
    assert message.startswith("ca_certificate_pem: ")
    assert re.search(reason, message), message
    assert corp_ca.key_pem.splitlines()[1] not in message, "key material is never echoed"
    assert list(client.beta.tunnels.certificates.list(tunnel_id, include_archived=True)) == []


@pytest.mark.parametrize(
    "extra", [{"ca_certificate_pem": 5}, {"unexpected": True}], ids=["not a string", "unknown field"]
)
def test_a_malformed_body_is_a_400(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority, extra: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.BadRequestError):
        client.beta.tunnels.certificates.create(tunnel_id, ca_certificate_pem=corp_ca.pem, extra_body=extra)


def test_unknown_tunnels_and_certificates_are_404(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority
) -> None:
    certificates = client.beta.tunnels.certificates
    created = register(client, tunnel_id, corp_ca.pem)
    other_tunnel = client.beta.tunnels.create().id
    calls = [
        lambda: certificates.create("tnl_unknown", ca_certificate_pem=corp_ca.pem),
        lambda: certificates.list("tnl_unknown"),
        lambda: certificates.retrieve(created.id, tunnel_id="tnl_unknown"),
        lambda: certificates.retrieve("tcrt_unknown", tunnel_id=tunnel_id),
        lambda: certificates.archive("tcrt_unknown", tunnel_id=tunnel_id),
        # A certificate is found only under its own tunnel.
        lambda: certificates.retrieve(created.id, tunnel_id=other_tunnel),
        lambda: certificates.archive(created.id, tunnel_id=other_tunnel),
    ]
    for call in calls:
        with pytest.raises(anthropic.NotFoundError) as raised:
            call()
        assert error_of(raised)[:2] == (404, "not_found_error")
    assert certificates.retrieve(created.id, tunnel_id=tunnel_id).archived_at is None


def test_archiving_the_tunnel_archives_its_certificates_with_it(
    client: anthropic.Anthropic, tunnel_id: str, corp_ca: Authority, other_ca: Authority
) -> None:
    held = [register(client, tunnel_id, ca.pem) for ca in (corp_ca, other_ca)]
    tunnel = client.beta.tunnels.archive(tunnel_id)
    certificates = client.beta.tunnels.certificates
    assert list(certificates.list(tunnel_id)) == []
    kept = {c.id: c.archived_at for c in certificates.list(tunnel_id, include_archived=True)}
    assert kept == {c.id: tunnel.archived_at for c in held}
    with pytest.raises(anthropic.BadRequestError, match="archived"):
        certificates.create(tunnel_id, ca_certificate_pem=make_certificate("late").pem)


# TLS through the tunnel ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_onprem(tmp_path_factory: pytest.TempPathFactory, corp_ca: Authority) -> Iterator[ServerProcess]:
    """An on-prem MCP server speaking HTTPS only, its certificate issued by ``corp_ca``."""
    leaf = make_certificate("crm.corp", issuer=corp_ca, ca=False, addresses=("127.0.0.1",))
    folder = tmp_path_factory.mktemp("onprem-tls")
    (folder / "cert.pem").write_text(leaf.pem)
    (folder / "key.pem").write_text(leaf.key_pem)
    args = ["--port", "0", "--name", "crm", "--certfile", str(folder / "cert.pem")]
    server = start_server([*args, "--keyfile", str(folder / "key.pem")], module="tests.support.tunnel_onprem")
    try:
        assert server.url.startswith("https://127.0.0.1:")
        yield server
    finally:
        server.stop()


@dataclass
class Tunnel:
    id: str
    domain: str
    gateway: TunnelGateway

    def call(self, name: str, scheme: str = "https") -> Any:
        url = f"{scheme}://crm.{self.domain}/mcp"
        return self.gateway.call(call_tool, self.gateway.hub, url, name, None)


@pytest.fixture
def tls_tunnel(
    client: anthropic.Anthropic, gateway: TunnelGateway, tls_onprem: ServerProcess, tmp_path: Path
) -> Iterator[Tunnel]:
    """A tunnel whose agent routes ``crm`` to the HTTPS server (its own credential added)."""
    created = client.beta.tunnels.create(display_name="tls")
    token = client.beta.tunnels.reveal_token(created.id).tunnel_token
    route = {
        "subdomain": "crm",
        "target": tls_onprem.url,
        "headers": {"Authorization": "Bearer ${CRM_TOKEN}"},
    }
    config = write_config(tmp_path / "tunnel.yaml", [route])
    agent = start_agent(gateway.url, token, config, "tls-agent", connections=1, env={"CRM_TOKEN": CRM_SECRET})
    try:
        gateway.call(gateway.hub.wait_for_connections, created.id, 1, 15.0)
        yield Tunnel(created.id, created.domain, gateway)
    finally:
        agent.stop()


def test_a_server_signed_by_a_registered_ca_is_reached_over_tls(
    client: anthropic.Anthropic, tls_tunnel: Tunnel, corp_ca: Authority
) -> None:
    register(client, tls_tunnel.id, corp_ca.pem)
    result = tls_tunnel.call("whoami")
    assert not result.is_error
    assert text_of(result) == fingerprint(f"Bearer {CRM_SECRET}"), "the agent's credential went over TLS"


def test_without_a_registered_ca_the_agent_keeps_its_default_trust(tls_tunnel: Tunnel) -> None:
    with pytest.raises(httpx2.ConnectError, match=r"not trusted by the agent's default trust store"):
        tls_tunnel.call("whoami")


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_a_ca_that_did_not_sign_the_server_is_not_trusted(
    client: anthropic.Anthropic, tls_tunnel: Tunnel, other_ca: Authority, scheme: str
) -> None:
    """The route's ``https://`` target makes the last hop TLS, whatever the URL's scheme."""
    register(client, tls_tunnel.id, other_ca.pem)
    pattern = r"route crm: TLS certificate of 127\.0\.0\.1 not trusted by the tunnel's CA certificates"
    with pytest.raises(httpx2.ConnectError, match=pattern):
        tls_tunnel.call("whoami", scheme)


def test_archiving_the_ca_stops_trusting_it_for_the_next_connection(
    client: anthropic.Anthropic, tls_tunnel: Tunnel, corp_ca: Authority, other_ca: Authority
) -> None:
    corp = register(client, tls_tunnel.id, corp_ca.pem)
    other = register(client, tls_tunnel.id, other_ca.pem)
    assert text_of(tls_tunnel.call("server_name")) == "crm"
    client.beta.tunnels.certificates.archive(other.id, tunnel_id=tls_tunnel.id)
    assert text_of(tls_tunnel.call("server_name")) == "crm", "the issuing CA is still trusted"
    client.beta.tunnels.certificates.archive(corp.id, tunnel_id=tls_tunnel.id)
    # The last one archived: the tunnel carries no MCP traffic at all (the SDK's rule), not
    # even to a plain-HTTP URL, until a certificate is added again.
    for scheme in ("https", "http"):
        with pytest.raises(httpx2.ConnectError, match=r"rejects MCP traffic until a new certificate"):
            tls_tunnel.call("server_name", scheme)
    register(client, tls_tunnel.id, corp_ca.pem)
    assert text_of(tls_tunnel.call("server_name")) == "crm"


# The agent's side of the trust set ----------------------------------------------------------


def test_the_pinned_context_trusts_the_registered_cas_and_nothing_else(
    corp_ca: Authority, other_ca: Authority
) -> None:
    context = pinned_context([corp_ca.pem, other_ca.pem])
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    expected = [ca.certificate.public_bytes(serialization.Encoding.DER) for ca in (corp_ca, other_ca)]
    loaded = context.get_ca_certs(binary_form=True)
    assert sorted(loaded) == sorted(expected), "no system root is loaded beside them"
    with pytest.raises(BadTrust):
        pinned_context(["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])


@pytest.mark.parametrize(
    "trust",
    [["pem"] * (MAX_TRUST + 1), [5], "pem", [""]],
    ids=["too many", "not text", "not a list", "empty"],
)
def test_a_request_head_with_a_malformed_trust_list_is_refused(trust: Any) -> None:
    head = {"method": "POST", "target": "/mcp", "headers": [], "has_body": False, "trust": trust}

    async def read() -> None:
        send, receive = anyio.create_memory_object_stream[bytes](1)
        raw = json.dumps(head).encode()
        await send.send(struct.pack("!I", len(raw)) + raw)
        await read_request(BufferedByteReceiveStream(receive))

    with pytest.raises(HeadError, match="trust"):
        anyio.run(read)


def test_a_request_head_carries_the_trust_list_to_the_agent(corp_ca: Authority) -> None:
    sent = RequestHead("POST", "/mcp", [("content-type", "application/json")], True, (corp_ca.pem,))

    async def round_trip() -> RequestHead:
        send, receive = anyio.create_memory_object_stream[bytes](1)
        await send.send(encode_request(sent))
        return await read_request(BufferedByteReceiveStream(receive))

    assert anyio.run(round_trip) == sent
    assert b"trust" not in encode_request(RequestHead("GET", "/", [], False)), "absent when empty"
