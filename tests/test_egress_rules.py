"""Unit tests of the egress pieces that need no process: host rules, HTTP framing, credentials, CA, flags."""

from __future__ import annotations

import argparse
import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from sandbox_server.bwrap_args import bwrap_argv
from sandbox_server.egress import PACKAGE_MANAGER_HOSTS, add_egress_arguments, egress_from_args
from sandbox_server.egress.ca import CA_CERT_NAME, CA_KEY_NAME, CAError, CertificateAuthority, ensure_ca
from sandbox_server.egress.config import EgressSettings, describe_network
from sandbox_server.egress.credentials import CredentialsError, parse_credentials
from sandbox_server.egress.http import Headers, HttpError, RequestHead, request_framing
from sandbox_server.egress.mount import SANDBOX_DIR, prepare_mount
from sandbox_server.egress.policy import (
    EgressMode,
    EgressPolicy,
    Host,
    InvalidHost,
    is_internal,
    parse_host,
    parse_host_pattern,
    parse_host_patterns,
)
from sandbox_server.egress.resolve import Override, parse_override
from sandbox_server.egress.scrub import StreamReplacer
from sandbox_server.egress.tls import LeafCertificates
from sandbox_server.limits import SandboxLimits

SECRET = "sk_live_" + "9" * 24
PLACEHOLDER = "tether-ph-" + "a" * 32

# --------------------------------------------------------------------------- hosts and patterns


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("API.Example.COM.", Host("api.example.com")),
        ("2130706433", Host("127.0.0.1", ipaddress.ip_address("127.0.0.1"))),
        ("0x7f000001", Host("127.0.0.1", ipaddress.ip_address("127.0.0.1"))),
        ("0177.0.0.1", Host("127.0.0.1", ipaddress.ip_address("127.0.0.1"))),
        ("127.1", Host("127.0.0.1", ipaddress.ip_address("127.0.0.1"))),
        ("[::1]", Host("::1", ipaddress.ip_address("::1"))),
        ("[::FFFF:127.0.0.1]", Host("::ffff:7f00:1", ipaddress.ip_address("::ffff:127.0.0.1"))),
        ("169.254.169.254", Host("169.254.169.254", ipaddress.ip_address("169.254.169.254"))),
    ],
)
def test_hosts_are_normalised_as_clients_read_them(raw: str, expected: Host) -> None:
    assert parse_host(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "exa mple.com",
        "example..com",
        "a.b.999",
        "1.2.3.4.5",
        "[fe80::1%eth0]",
        "bücher.de",
        "-a.com",
        "a_b.c/",
    ],
)
def test_malformed_hosts_are_refused(raw: str) -> None:
    with pytest.raises(InvalidHost):
        parse_host(raw)


def test_patterns_match_at_label_boundaries_only() -> None:
    exact, wildcard = parse_host_pattern("example.com"), parse_host_pattern("*.Example.com")
    assert exact.matches(parse_host("EXAMPLE.com."))
    assert not exact.matches(parse_host("api.example.com"))
    assert wildcard.matches(parse_host("api.example.com"))
    assert wildcard.matches(parse_host("a.b.example.com"))
    assert not wildcard.matches(parse_host("example.com")), "the SDK: a wildcard excludes the apex"
    for hostile in (
        "evilexample.com",
        "example.com.evil.net",
        "example.co",
        "xexample.com",
        "api.example.com.evil.net",
    ):
        assert not exact.matches(parse_host(hostile)), hostile
        assert not wildcard.matches(parse_host(hostile)), hostile
    ip = parse_host_pattern("192.0.2.1")
    assert ip.matches(parse_host("3221225985"))  # the same address, spelled as a number
    assert not ip.matches(parse_host("192.0.2.1.nip.io"))


@pytest.mark.parametrize(
    "raw", ["*", "https://example.com", "example.com:443", "example.com/path", "a.*.com", "*.1.2.3.4"]
)
def test_bad_patterns_fail_at_start(raw: str) -> None:
    with pytest.raises(InvalidHost):
        parse_host_pattern(raw)


def test_package_manager_hosts_are_valid_patterns() -> None:
    patterns = parse_host_patterns(PACKAGE_MANAGER_HOSTS)
    assert {"pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "proxy.golang.org"} <= set(
        PACKAGE_MANAGER_HOSTS
    )
    assert all(p.name for p in patterns), "exact names only"


@pytest.mark.parametrize(
    ("address", "internal"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("::1", True),
        ("fd00::1", True),
        ("fe80::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("8.8.8.8", False),
        ("2606:4700::1111", False),
        ("64:ff9b::808:808", False),
    ],
)
def test_internal_addresses(address: str, internal: bool) -> None:
    assert is_internal(ipaddress.ip_address(address)) is internal


def test_limited_policy() -> None:
    policy = EgressPolicy(
        EgressMode.LIMITED, parse_host_patterns(["api.example.com", "10.0.0.5"]), frozenset({"pinned.test"})
    )
    assert policy.check_host(parse_host("api.example.com")).allowed
    assert not policy.check_host(parse_host("example.com")).allowed
    assert not policy.check_host(parse_host("8.8.8.8")).reason.startswith("host")
    assert policy.check_host(parse_host("10.0.0.5")).allowed, "an IP allowed explicitly"
    public, metadata = ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("169.254.169.254")
    name = parse_host("api.example.com")
    assert policy.check_addresses(name, [public]).allowed
    rebinding = policy.check_addresses(name, [public, metadata])
    assert not rebinding.allowed
    assert rebinding.reason == "resolves to internal address 169.254.169.254"
    assert policy.check_addresses(name, [ipaddress.ip_address("10.0.0.5")]).allowed, "allowed by IP"
    assert policy.check_addresses(parse_host("pinned.test"), [metadata]).allowed, "operator pins are trusted"
    assert not policy.check_addresses(name, []).allowed


def test_unrestricted_policy_still_refuses_internal_addresses() -> None:
    policy = EgressPolicy(EgressMode.UNRESTRICTED)
    assert policy.check_host(parse_host("anything.example")).allowed
    assert policy.check_host(parse_host("8.8.8.8")).allowed
    assert not policy.check_host(parse_host("2130706433")).allowed
    assert not policy.check_addresses(parse_host("x.test"), [ipaddress.ip_address("127.0.0.1")]).allowed
    assert not EgressPolicy(EgressMode.NONE).check_host(parse_host("example.com")).allowed


def test_resolver_overrides() -> None:
    assert parse_override("API.test=127.0.0.1:8443") == (
        "api.test",
        Override(ipaddress.ip_address("127.0.0.1"), 8443),
    )
    assert parse_override("a.test=[::1]:9") == ("a.test", Override(ipaddress.ip_address("::1"), 9))
    assert parse_override("a.test=10.0.0.1") == ("a.test", Override(ipaddress.ip_address("10.0.0.1"), None))
    for bad in ("a.test", "a.test=nope", "127.0.0.1=127.0.0.1", "a.test=1.2.3.4:0", "a.test=[::1]x"):
        with pytest.raises(ValueError):
            parse_override(bad)


# --------------------------------------------------------------------------- HTTP


def _request(*fields: tuple[str, str]) -> RequestHead:
    return RequestHead("POST", "/", "HTTP/1.1", Headers(fields))


@pytest.mark.parametrize(
    "fields",
    [
        (("Content-Length", "5"), ("Transfer-Encoding", "chunked")),
        (("Content-Length", "5"), ("Content-Length", "6")),
        (("Content-Length", "-1"),),
        (("Content-Length", "5, 6"),),
        (("Transfer-Encoding", "gzip, chunked"),),
        (("Transfer-Encoding", "chunked, identity"),),
    ],
)
def test_ambiguous_request_framing_is_refused(fields: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(HttpError):
        request_framing(_request(*fields))


def test_request_framing() -> None:
    assert request_framing(_request(("Content-Length", "5, 5"))).length == 5
    assert request_framing(_request(("Transfer-Encoding", "Chunked"))).kind == "chunked"
    assert request_framing(_request()).kind == "none"


def test_hop_by_hop_headers_are_dropped() -> None:
    headers = Headers(
        [
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Proxy-Authorization", "Basic x"),
            ("Keep-Alive", "timeout=5"),
            ("Accept", "*/*"),
        ]
    )
    assert list(headers.without_hop_by_hop()) == [("Accept", "*/*")]


def test_stream_replacer_finds_matches_split_anywhere() -> None:
    data = b"head " + SECRET.encode() + b" middle " + SECRET.encode() + SECRET.encode() + b" tail"
    expected = data.replace(SECRET.encode(), PLACEHOLDER.encode())
    for cut in range(len(data) + 1):
        for second in range(cut, len(data) + 1, 7):
            replacer = StreamReplacer({SECRET.encode(): PLACEHOLDER.encode()})
            out = b"".join(replacer.feed(p) for p in (data[:cut], data[cut:second], data[second:]))
            assert out + replacer.flush() == expected


# --------------------------------------------------------------------------- credentials


def _credential(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "environment_variable",
        "secret_name": "STRIPE_KEY",
        "placeholder": PLACEHOLDER,
        "secret_value": SECRET,
        "networking": {"type": "limited", "allowed_hosts": ["api.stripe.com", "*.stripe.com"]},
        "injection_location": {"header": True, "body": False},
    }
    entry.update(overrides)
    return entry


def test_credentials_document() -> None:
    vault = parse_credentials({"credentials": [_credential()]})
    assert vault.environment() == {"STRIPE_KEY": PLACEHOLDER}
    assert vault.applies_to(parse_host("api.stripe.com"))
    assert vault.applies_to(parse_host("files.stripe.com"))
    assert not vault.applies_to(parse_host("stripe.com"))
    assert not vault.applies_to(parse_host("api.stripe.com.evil.net"))
    assert SECRET not in repr(vault), "a repr (say in a traceback) must not show the value"

    anywhere = parse_credentials({"credentials": [_credential(networking={"type": "unrestricted"})]})
    assert anywhere.applies_to(parse_host("example.org"))
    nowhere = parse_credentials(
        {"credentials": [_credential(injection_location={"header": False, "body": False})]}
    )
    assert not nowhere.applies_to(parse_host("api.stripe.com")), "no location, nothing to intercept for"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"secret_name": "PATH"}, "not a usable environment variable name"),
        ({"secret_name": "LD_PRELOAD"}, "not a usable environment variable name"),
        ({"secret_name": "HTTPS_PROXY"}, "not a usable environment variable name"),
        ({"placeholder": "short"}, "placeholder"),
        ({"secret_value": ""}, "secret_value"),
        ({"secret_value": SECRET + "\r\nX-Injected: 1"}, "line breaks"),
        ({"networking": {"type": "limited", "allowed_hosts": ["https://api.stripe.com"]}}, "allowed_hosts"),
        ({"networking": {"type": "open"}}, "networking.type"),
        ({"allowed_hosts": ["api.stripe.com"], "networking": None}, "networking must be a dict"),
        ({"type": "static_bearer"}, "type must be environment_variable"),
        ({"injection_location": {"header": "yes"}}, "booleans"),
    ],
)
def test_invalid_credentials_fail_without_showing_the_secret(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(CredentialsError) as failed:
        parse_credentials({"credentials": [_credential(**overrides)]})
    assert message in str(failed.value)
    assert SECRET not in str(failed.value)


def test_placeholders_must_not_overlap() -> None:
    other = _credential(secret_name="OTHER", placeholder=PLACEHOLDER + "-2", secret_value="v" * 20)
    with pytest.raises(CredentialsError, match="occurs in"):
        parse_credentials({"credentials": [_credential(), other]})
    with pytest.raises(CredentialsError, match="same secret_name"):
        parse_credentials({"credentials": [_credential(), _credential(placeholder="tether-ph-" + "b" * 32)]})


def test_rewrite_substitutes_only_enabled_locations() -> None:
    body_only = _credential(
        secret_name="BODY_KEY",
        placeholder="tether-ph-" + "b" * 32,
        secret_value="body-secret-value",
        injection_location={"header": False, "body": True},
    )
    vault = parse_credentials({"credentials": [_credential(), body_only]})
    rewrite = vault.rewrite_for(parse_host("api.stripe.com"))
    headers = Headers(
        [
            ("Host", PLACEHOLDER),
            ("Authorization", f"Bearer {PLACEHOLDER}"),
            ("X-Body-Key", "tether-ph-" + "b" * 32),
        ]
    )
    assert rewrite.substitute_headers(headers) == ["STRIPE_KEY"]
    assert list(headers) == [
        ("Host", PLACEHOLDER),
        ("Authorization", f"Bearer {SECRET}"),
        ("X-Body-Key", "tether-ph-" + "b" * 32),
    ]
    body, used = rewrite.substitute_body(f"{PLACEHOLDER}|{'tether-ph-' + 'b' * 32}".encode())
    assert body == f"{PLACEHOLDER}|body-secret-value".encode()
    assert used == ["BODY_KEY"]

    elsewhere = vault.rewrite_for(parse_host("api.example.com"))
    untouched = Headers([("Authorization", f"Bearer {PLACEHOLDER}")])
    assert elsewhere.substitute_headers(untouched) == []
    assert untouched.get("Authorization") == f"Bearer {PLACEHOLDER}"

    echoed = Headers([("X-Echo", f"you sent {SECRET}")])
    rewrite.redact_headers(echoed)
    assert echoed.get("X-Echo") == f"you sent {PLACEHOLDER}"


# --------------------------------------------------------------------------- CA, settings, mount


def test_ensure_ca_creates_a_private_key_once(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    cert_path, key_path = ensure_ca(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    ca = CertificateAuthority.load(cert_path, key_path)
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is True
    first = cert_path.read_bytes()
    key_path.chmod(0o644)
    assert ensure_ca(directory) == (cert_path, key_path)
    assert cert_path.read_bytes() == first, "generated once, then reused"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600

    cert_path.unlink()
    ensure_ca(directory)
    assert cert_path.read_bytes() != first, "half a pair is replaced"

    other = tmp_path / "other"
    ensure_ca(other)
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.load(cert_path, other / CA_KEY_NAME)
    assert (directory / CA_CERT_NAME).exists()


def test_egress_flags_round_trip() -> None:
    parser = argparse.ArgumentParser()
    add_egress_arguments(parser)
    args = parser.parse_args(
        [
            "--egress", "limited",
            "--allow-host", "api.example.com",
            "--allow-host", "*.example.org",
            "--egress-resolve", "api.example.com=127.0.0.1:8443",
            "--session-id", "sesn_1",
            "--credentials-url", "http://127.0.0.1:1/c",
        ]
    )  # fmt: skip
    settings = egress_from_args(args)
    assert settings.mode is EgressMode.LIMITED
    assert settings.allow_hosts == ("api.example.com", "*.example.org")
    assert settings.policy().overridden == frozenset({"api.example.com"})
    assert egress_from_args(parser.parse_args([])) == EgressSettings()
    for bad in (
        {"allow_hosts": ("https://x",)},
        {"resolve": ("x",)},
        {"ca_cert": Path("a")},
        {"credentials_url": "http://x"},
    ):
        with pytest.raises(ValueError):
            EgressSettings(**bad)  # type: ignore[arg-type]


def test_network_description_for_the_model() -> None:
    assert describe_network(EgressSettings(), []) == "There is no network access."
    limited = describe_network(EgressSettings(EgressMode.LIMITED, ("api.example.com",)), ["STRIPE_KEY"])
    assert "allows only: api.example.com" in limited
    assert "$STRIPE_KEY" in limited
    assert "public hosts" in describe_network(EgressSettings(EgressMode.UNRESTRICTED), [])


def test_mount_and_command_line(tmp_path: Path) -> None:
    mount = prepare_mount(tmp_path, ca_pem=b"-----BEGIN CERTIFICATE-----\n", variables={"KEY": PLACEHOLDER})
    assert (tmp_path / "forwarder.py").read_text().startswith('"""In-sandbox forwarder')
    assert (tmp_path / "ca-bundle.pem").read_bytes().endswith(b"-----BEGIN CERTIFICATE-----\n")
    assert mount.env["KEY"] == PLACEHOLDER
    assert mount.env["HTTPS_PROXY"] == mount.env["http_proxy"] == "http://127.0.0.1:3128"
    assert mount.env["NODE_EXTRA_CA_CERTS"] == f"{SANDBOX_DIR}/ca-bundle.pem"
    assert f"/usr/bin/python3 -I -S {SANDBOX_DIR}/forwarder.py 127.0.0.1 3128" in mount.prelude
    argv = bwrap_argv(
        "/usr/bin/bwrap",
        workspace_fd=5,
        etc_fds={},
        limits=SandboxLimits(),
        inner=["bash"],
        extra_args=mount.bwrap_args(6, 7),
        extra_env=mount.env,
    )
    joined = " ".join(argv)
    assert f"--ro-bind-fd 6 {SANDBOX_DIR} --ro-bind-fd 7 /etc/ssl/certs/ca-certificates.crt" in joined
    assert str(tmp_path) not in joined, "bound by descriptor: no host path on the command line"
    fds = mount.open_fds()
    try:
        assert os.readlink(f"/proc/self/fd/{fds['egress']}") == str(tmp_path)
        assert os.readlink(f"/proc/self/fd/{fds['bundle']}") == str(tmp_path / "ca-bundle.pem")
    finally:
        for fd in fds.values():
            os.close(fd)
    assert f"--setenv KEY {PLACEHOLDER}" in joined
    assert "--unshare-all" in argv and "--share-net" not in argv, "still no network namespace shared"
    plain = tmp_path / "plain"
    plain.mkdir()
    no_ca = prepare_mount(plain, ca_pem=None, variables={})
    assert "SSL_CERT_FILE" not in no_ca.env
    assert not (plain / "ca-bundle.pem").exists()
    assert no_ca.bwrap_args(6) == ["--ro-bind-fd", "6", SANDBOX_DIR]
    plain_fds = no_ca.open_fds()
    assert set(plain_fds) == {"egress"}, "no bundle to bind"
    os.close(plain_fds["egress"])


@pytest.mark.parametrize("name", ["api.example.com", "a" * 60 + "." + "b" * 60 + ".example.com", "192.0.2.7"])
def test_leaf_certificates_verify_against_the_egress_ca(tmp_path: Path, name: str) -> None:
    ca = CertificateAuthority.load(*ensure_ca(tmp_path / "ca"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    leaves = LeafCertificates(ca, scratch)
    server = leaves.context_for(parse_host(name))
    assert leaves.context_for(parse_host(name)) is server, "cached"
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    assert _handshake(client, server, name) == "http/1.1"
    wrong = ssl.create_default_context(cadata=ca.cert_pem.decode())
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(wrong, server, "other.example.com")
    assert list(scratch.iterdir()) == [], "no key or certificate stays on disk"
    throwaway = CertificateAuthority.generate()
    server = LeafCertificates(throwaway, scratch).context_for(parse_host(name))
    assert (
        _handshake(ssl.create_default_context(cadata=throwaway.cert_pem.decode()), server, name) == "http/1.1"
    )


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, name: str) -> str | None:
    """A TLS handshake in memory; returns the negotiated ALPN protocol."""
    client.set_alpn_protocols(["h2", "http/1.1"])
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(c_in, c_out, server_hostname=name)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client_side), ("server", server_side)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client_side.selected_alpn_protocol()
    raise AssertionError("handshake did not finish")
