"""The egress proxy in-process, spoken to in raw HTTP over its Unix socket.

The sandbox tests show the proxy working for real clients; these pin down the
protocol edges a hostile client controls byte by byte (smuggling, HTTP/1.0,
oversized bodies, an untrusted upstream), with the same ``EgressService`` the
sandbox server runs, on its own thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_server.egress import exchange
from sandbox_server.egress.config import EgressSettings
from sandbox_server.egress.gate import Gate
from sandbox_server.egress.http import HttpError
from sandbox_server.egress.policy import EgressMode, EgressPolicy, Host, IPAddress, parse_host_patterns
from sandbox_server.egress.resolve import Resolver
from sandbox_server.egress.service import EgressService, EgressStartError
from tests.support.egress import RecordingServer, TestPKI, credentials_responder

SECRET = "sk_live_" + secrets.token_hex(16)
PLACEHOLDER = "tether-ph-" + secrets.token_hex(16)
TOKEN = "tok_" + secrets.token_hex(8)


class Upstreams:
    def __init__(self, root: Path) -> None:
        self.pki = TestPKI(root)
        self.https = RecordingServer(tls=self.pki.server_context(["api.test"]))
        self.http = RecordingServer()
        document = {
            "credentials": [
                {
                    "secret_name": "KEY",
                    "placeholder": PLACEHOLDER,
                    "secret_value": SECRET,
                    "networking": {"type": "limited", "allowed_hosts": ["api.test"]},
                    "injection_location": {"header": True, "body": True},
                }
            ]
        }
        self.credentials = RecordingServer(responder=credentials_responder(TOKEN, document))

    def settings(self, *, upstream_ca: bool = True) -> EgressSettings:
        return EgressSettings(
            mode=EgressMode.LIMITED,
            allow_hosts=("api.test", "plain.test"),
            resolve=(f"api.test=127.0.0.1:{self.https.port}", f"plain.test=127.0.0.1:{self.http.port}"),
            session_id="sesn_proxy",
            credentials_url=f"http://127.0.0.1:{self.credentials.port}/credentials",
            upstream_ca=self.pki.ca_path if upstream_ca else None,
        )

    def close(self) -> None:
        for server in (self.https, self.http, self.credentials):
            server.close()


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    servers = Upstreams(tmp_path_factory.mktemp("proxy"))
    yield servers
    servers.close()


@pytest.fixture(scope="module")
def service(upstreams: Upstreams) -> Iterator[EgressService]:
    running = EgressService.start(upstreams.settings(), token=TOKEN)
    yield running
    running.close()
    assert not running.mount.host_dir.exists(), "the private directory is removed"


async def _exchange(service: EgressService, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh proxy connection and read until the proxy closes it."""
    reader, writer = await asyncio.open_unix_connection(str(service.mount.socket_path))
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def _intercepted(service: EgressService, raw: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """``CONNECT api.test:443``, TLS verified against the egress CA bundle, then ``raw``; read to the end."""
    reader, writer = await asyncio.open_unix_connection(str(service.mount.socket_path))
    writer.write(b"CONNECT api.test:443 HTTP/1.1\r\nHost: api.test:443\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    if context is None:
        context = ssl.create_default_context(cafile=str(service.mount.host_dir / "ca-bundle.pem"))
    await writer.start_tls(context, server_hostname="api.test")
    writer.write(raw)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


@pytest.mark.anyio
async def test_smuggling_shapes_are_refused(service: EgressService, upstreams: Upstreams) -> None:
    mark = len(upstreams.http.received)
    smuggle = (
        b"POST http://plain.test/ HTTP/1.1\r\nHost: plain.test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\n\r\n"
    )
    assert (await _exchange(service, smuggle)).startswith(b"HTTP/1.1 400")
    folded = b"GET http://plain.test/ HTTP/1.1\r\nHost: plain.test\r\nX-A: 1\r\n folded\r\n\r\n"
    assert (await _exchange(service, folded)).startswith(b"HTTP/1.1 400")
    origin = b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n"
    assert b"absolute http:// URL" in await _exchange(service, origin)
    https_form = b"GET https://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n"
    assert b"reached with CONNECT" in await _exchange(service, https_form)
    huge = b"GET http://plain.test/ HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    assert (await _exchange(service, huge)).startswith(b"HTTP/1.1 431")
    assert upstreams.http.received[mark:] == []


@pytest.mark.anyio
async def test_http_1_0_client_gets_a_close_delimited_body(
    service: EgressService, upstreams: Upstreams
) -> None:
    response = await _exchange(service, b"GET http://plain.test/echo?chunked HTTP/1.0\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"transfer-encoding" not in head.lower()
    assert json.loads(body)["path"] == "/echo?chunked"


@pytest.mark.anyio
async def test_substitution_inside_tls_with_expect_continue(
    service: EgressService, upstreams: Upstreams
) -> None:
    body = f'{{"key": "{PLACEHOLDER}"}}'.encode()
    request = (
        b"POST /charge HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nExpect: 100-continue\r\n"
        b"Authorization: Bearer "
        + PLACEHOLDER.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    response = await _intercepted(service, request)
    assert response.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200")
    received = upstreams.https.received[-1]
    assert received.header("Authorization") == f"Bearer {SECRET}"
    assert json.loads(received.body) == {"key": SECRET}
    assert received.header("Content-Length") == str(len(received.body))
    assert received.header("Expect") is None
    assert SECRET.encode() not in response


@pytest.mark.anyio
async def test_oversized_bodies_travel_unsubstituted(
    service: EgressService, upstreams: Upstreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "MAX_REWRITTEN_BODY", 1024)
    monkeypatch.setattr(exchange, "MAX_SCRUBBED_LENGTH", 64)
    body = PLACEHOLDER.encode() + b"x" * 4096
    request = (
        b"POST /echo HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\nX-K: "
        + PLACEHOLDER.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    response = await _intercepted(service, request)
    received = upstreams.https.received[-1]
    assert received.body == body, "too big to rewrite: forwarded as sent, placeholder and all"
    assert received.header("X-K") == SECRET, "headers are still substituted"
    head, _, chunks = response.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head, "a scrubbed response too big to buffer is re-chunked"
    assert SECRET.encode() not in chunks
    assert PLACEHOLDER.encode() in chunks


@pytest.mark.anyio
async def test_an_untrusted_upstream_never_gets_the_secret(
    upstreams: Upstreams, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.egress")
    untrusting = EgressService.start(upstreams.settings(upstream_ca=False), token=TOKEN)
    try:
        mark = len(upstreams.https.received)
        request = b"GET / HTTP/1.1\r\nHost: api.test\r\nAuthorization: " + PLACEHOLDER.encode() + b"\r\n\r\n"
        response = await _intercepted(untrusting, request)
    finally:
        untrusting.close()
    assert response.startswith(b"HTTP/1.1 502")
    assert b"certificate not trusted" in response
    assert upstreams.https.received[mark:] == []
    errors = [json.loads(r.getMessage()) for r in caplog.records if '"decision":"error"' in r.getMessage()]
    assert errors and errors[-1]["host"] == "api.test"
    assert SECRET not in caplog.text


@pytest.mark.anyio
async def test_a_client_that_does_not_trust_the_egress_ca_gets_nothing(
    service: EgressService, upstreams: Upstreams
) -> None:
    mark = len(upstreams.https.received)
    with pytest.raises(ssl.SSLCertVerificationError):
        await _intercepted(service, b"GET / HTTP/1.1\r\n\r\n", ssl.create_default_context())
    assert upstreams.https.received[mark:] == []


@pytest.mark.anyio
async def test_names_resolving_to_internal_addresses_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether.egress")

    class Rebinding(Resolver):
        async def resolve(self, host: Host, port: int) -> list[tuple[IPAddress, int]]:
            return [
                (ipaddress.ip_address("93.184.216.34"), port),
                (ipaddress.ip_address("169.254.169.254"), port),
            ]

    policy = EgressPolicy(EgressMode.LIMITED, parse_host_patterns(["metadata.example.com"]))
    gate = Gate(policy, Rebinding(), "sesn_x")
    with pytest.raises(HttpError) as refused:
        await gate.admit("GET", "metadata.example.com", 80)
    assert refused.value.status == 403
    entry = json.loads(caplog.records[-1].getMessage())
    assert entry["decision"] == "deny"
    assert entry["reason"] == "resolves to internal address 169.254.169.254"
    assert entry["session"] == "sesn_x"


def test_start_fails_without_the_token_or_with_a_bad_document(upstreams: Upstreams) -> None:
    with pytest.raises(EgressStartError, match="TETHER_EGRESS_TOKEN"):
        EgressService.start(upstreams.settings(), token=None)
    with pytest.raises(EgressStartError, match="HTTP 401") as failed:
        EgressService.start(upstreams.settings(), token="wrong")
    assert SECRET not in str(failed.value)
