"""The deployment artifacts and the gateway's serving options an operator meets first.

Artifacts: the Kubernetes manifests validate against the Kubernetes schemas
(``kubernetes-validate``, strict); the compose file parses, builds from Dockerfiles that exist
and sets only variables the programs read; the systemd units pass ``systemd-analyze verify``;
the LICENSE is the license ``pyproject.toml`` declares. Serving: ``--tls-cert/--tls-key``
serve HTTPS that the official SDK reaches through a client trusting the test's CA, while
plain HTTP on the same port gets no answer; with TLS on, the gateway still reaches itself (the
embedded model, the vault credentials a sandbox fetches) through a loopback plain-HTTP listener
that asks for the same key; only TLS 1.2+ with modern suites is accepted; a port in use, or TLS
files that cannot serve, end the start with one line and a non-zero status, never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import ipaddress
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import asyncpg
import httpx2 as httpx
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import cli
from tests.support.processes import ServerProcess, listening_ports, running_server
from tests.support.sessions import send_and_stream, user_message

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30.0"
SOURCES = ("gateway", "sandbox_server", "tunnel_agent", "policies")


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") != "Kustomization":
                found.append((f"{path.name}:{document['kind']}/{document['metadata']['name']}", document))
    return found


def test_kubernetes_manifests_validate_against_the_schemas() -> None:
    manifests = _manifests()
    kinds = {document["kind"] for _, document in manifests}
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Secret"} <= kinds
    for name, document in manifests:
        try:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc.message}")
    # The validator is not a rubber stamp: a misspelt field in the gateway's Deployment fails.
    deployment = next(d for n, d in manifests if n == "gateway.yaml:Deployment/tether-gateway")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kubernetes_gateway_probes_secrets_and_volume_fit_the_gateway() -> None:
    manifests = dict(_manifests())
    pod = manifests["gateway.yaml:Deployment/tether-gateway"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True
    secret = manifests["secret.example.yaml:Secret/tether-gateway"]
    assert [ref["secretRef"]["name"] for ref in container["envFrom"]] == [secret["metadata"]["name"]]
    claim = manifests["gateway.yaml:PersistentVolumeClaim/tether-gateway-data"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    data_dir = next(e["value"] for e in container["env"] if e["name"] == "TETHER_DATA_DIR")
    assert container["volumeMounts"][0]["mountPath"] == data_dir
    service = manifests["gateway.yaml:Service/tether-gateway"]
    deployment = manifests["gateway.yaml:Deployment/tether-gateway"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["name"]
    for variable in [*secret["stringData"], *(e["name"] for e in container["env"])]:
        assert _read_by_tether(variable), f"{variable} is set for the gateway but nothing reads it"


def _read_by_tether(variable: str) -> bool:
    """Whether a Tether program (or its image's health check, or asyncpg, its PostgreSQL
    driver) reads this environment variable."""
    quoted = re.compile(rf"[\"']{re.escape(variable)}[\"']")
    files = [p for package in SOURCES for p in (ROOT / package).rglob("*.py")]
    files.append(DEPLOY / "docker" / "healthcheck.py")
    files.append(Path(asyncpg.__file__).parent / "connect_utils.py")
    return any(quoted.search(path.read_text()) for path in files)


def _with_defaults(value: str) -> str:
    """A compose value with every ``${VARIABLE:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_file_builds_existing_dockerfiles_and_sets_variables_tether_reads() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "gateway", "tunnel-agent"} <= set(services)
    for name in ("gateway", "tunnel-agent"):
        service = services[name]
        context = (DEPLOY / service["build"]["context"]).resolve()
        assert (context / service["build"]["dockerfile"]).is_file(), name
        assert context == ROOT
        for variable in service["environment"]:
            assert _read_by_tether(variable), f"compose sets {variable} on {name}; nothing reads it"
        assert service["healthcheck"]["test"][-1] in ("gateway", "tunnel")
        for volume in service["volumes"]:
            assert volume.split(":")[0] in compose["volumes"]
    gateway = services["gateway"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    database_url = gateway["environment"]["TETHER_DATABASE_URL"]
    assert database_url.startswith("postgresql://") and "@postgres:5432/" in database_url
    # The password never goes into the URL, where "@", ":" or "/" would break it: asyncpg
    # reads PGPASSWORD when the URL has none.
    assert "$" not in database_url and ":" not in urlsplit(database_url).netloc.split("@")[0]
    assert gateway["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    # Published on loopback unless the operator says otherwise: plain HTTP carries API keys.
    assert [_with_defaults(port) for port in gateway["ports"]] == ["127.0.0.1:8420:8420"]
    assert services["tunnel-agent"]["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert "--gateway=http://gateway:8420" in services["tunnel-agent"]["command"]
    # Every ${VARIABLE} the file uses is documented in its header.
    text = (DEPLOY / "compose.yaml").read_text()
    header = text.split("name: tether", 1)[0]
    for variable in set(re.findall(r"\$\{([A-Z_]+)", text)):
        assert variable in header, f"{variable} is used but not documented"


def test_dockerfiles_run_as_non_root_with_a_healthcheck_and_a_data_volume() -> None:
    for name in ("gateway", "tunnel-agent"):
        text = (DEPLOY / "docker" / f"{name}.Dockerfile").read_text()
        assert re.search(r"^ARG BASE=", text, re.M)
        assert re.search(r"^USER tether$", text, re.M)
        assert re.search(r"^HEALTHCHECK ", text, re.M)
        assert re.search(r"^VOLUME /var/lib/tether$", text, re.M)
        assert "bubblewrap" in text
    # The build context starts from nothing and lets in only what the images install.
    ignored = [
        line for line in (ROOT / ".dockerignore").read_text().splitlines() if line[:1] not in ("", "#")
    ]
    assert ignored[0] == "*"
    assert "!gateway/" in ignored and "!.venv/" not in ignored


def _unit(path: Path) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current[key] = value
    return sections


@pytest.mark.parametrize("name", ["tether-gateway.service", "tether-tunnel.service"])
def test_systemd_units_verify_and_are_hardened_without_breaking_bubblewrap(name: str, tmp_path: Path) -> None:
    unit = DEPLOY / "systemd" / name
    service = _unit(unit)["Service"]
    assert service.get("User") == "tether" or service.get("DynamicUser") == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    # bubblewrap needs namespaces and mount(2): these would break every sandbox.
    for breaking in ("RestrictNamespaces", "PrivateUsers", "ProtectHostname", "SystemCallFilter"):
        assert breaking not in service, breaking
    assert service["ExecStart"].startswith("/opt/tether/bin/tether ")
    # systemd-analyze checks the binary exists: point it at this checkout's.
    tether = Path(sys.executable).with_name("tether")
    copy_path = tmp_path / name
    copy_path.write_text(unit.read_text().replace("/opt/tether/bin/tether", str(tether)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(copy_path)], capture_output=True, text=True, timeout=120
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemd_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above can fail: a typo in a unit is reported against it."""
    tether = Path(sys.executable).with_name("tether")
    broken = tmp_path / "tether-gateway.service"
    text = (DEPLOY / "systemd" / "tether-gateway.service").read_text()
    broken.write_text(
        text.replace("/opt/tether/bin/tether", str(tether)).replace("ProtectSystem=", "ProtectSystm=")
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=120
    )
    assert "ProtectSystm" in done.stdout + done.stderr


def test_license_file_is_the_license_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    spdx = declared if isinstance(declared, str) else declared["text"]
    assert spdx == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text


# --- TLS -------------------------------------------------------------------------------------


def _write_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[2].chmod(0o600)
    return paths


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path, str]]:
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = _write_pki(folder)
    api_key = "tls-" + secrets.token_hex(12)
    # The files come through the environment, as a service manager would pass them.
    env = {"TETHER_API_KEYS": api_key, "TETHER_TLS_CERT": str(cert), "TETHER_TLS_KEY": str(key)}
    with pytest.MonkeyPatch.context() as patch:
        for variable in ("ANTHROPIC_API_KEY", "TETHER_MODEL_BASE_URL"):  # the embedded model, then
            patch.delenv(variable, raising=False)
        args = ["gateway", "--port", "0", "--data-dir", str(folder / "data")]
        with running_server(args, env) as server:
            yield server, ca, api_key


def test_tls_gateway_serves_the_sdk_over_https_only(tls_gateway: tuple[ServerProcess, Path, str]) -> None:
    server, ca, api_key = tls_gateway
    assert server.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(ca))
    with (
        httpx.Client(verify=trusting) as http,
        anthropic.Anthropic(base_url=server.url, api_key=api_key, http_client=http, max_retries=0) as client,
    ):
        agent = client.beta.agents.create(name="over-tls", model="claude-sonnet-4-6")
        assert agent.id in [a.id for a in client.beta.agents.list()]
        assert http.get(server.url + "/health").status_code == 200
    # Without the CA, the certificate is refused: the client really verified it above.
    with httpx.Client() as untrusting, pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.get(server.url + "/health")
    # Plain HTTP on the TLS port gets no HTTP answer at all.
    with httpx.Client() as plain, pytest.raises(httpx.TransportError):
        plain.get(server.url.replace("https://", "http://") + "/health")


def _trusting_client(ca: Path, server: ServerProcess, api_key: str) -> anthropic.Anthropic:
    http = httpx.Client(verify=ssl.create_default_context(cafile=str(ca)), timeout=120)
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, http_client=http, max_retries=0)


def test_with_tls_a_session_reaches_the_embedded_model_and_its_vault_credentials(
    tls_gateway: tuple[ServerProcess, Path, str],
) -> None:
    """The gateway's calls to itself (the embedded model; the credentials a sandbox fetches at
    start when the session has an ``environment_variable`` secret) work with TLS on."""
    server, ca, api_key = tls_gateway
    assert any("the scripted model" in line for line in server.output)
    with _trusting_client(ca, server, api_key) as client:
        vault = client.beta.vaults.create(display_name="tls")
        client.beta.vaults.credentials.create(
            vault.id,
            auth={
                "type": "environment_variable",
                "secret_name": "DEMO_KEY",
                "secret_value": "sk_" + secrets.token_hex(12),
                "networking": {"type": "limited", "allowed_hosts": ["api.example.test"]},
            },
        )
        environment = client.beta.environments.create(
            name="tls-limited",
            config={
                "type": "cloud",
                "networking": {"type": "limited", "allowed_hosts": ["api.example.test"]},
            },
        )
        agent = client.beta.agents.create(
            name="tls-demo",
            model="claude-sonnet-4-6",
            system="tether-demo",  # the embedded demo script: write a file, read it back
            tools=[{"type": "agent_toolset_20260401"}],
        )
        session = client.beta.sessions.create(
            agent=agent.id, environment_id=environment.id, vault_ids=[vault.id]
        )
        streamed = send_and_stream(client, session.id, [user_message("go")])
    errors = [e for e in streamed if e.type == "session.error"]
    assert not errors, errors
    results = [e for e in streamed if e.type == "agent.tool_result"]
    assert len(results) == 2 and not any(r.is_error for r in results), results
    replies = [b.text for e in streamed if e.type == "agent.message" for b in e.content]
    assert "The file is in place" in replies[-1] and "# Plan" in replies[-1]


def _internal_port(server: ServerProcess) -> int:
    public = int(server.url.rsplit(":", 1)[1])
    others = [port for port in listening_ports(server.process.pid) if port != public]
    assert len(others) == 1, others
    return others[0]


def test_the_internal_listener_is_loopback_http_and_needs_the_same_key(
    tls_gateway: tuple[ServerProcess, Path, str],
) -> None:
    server, _, api_key = tls_gateway
    internal = f"http://127.0.0.1:{_internal_port(server)}"
    with httpx.Client(timeout=30) as plain:
        assert plain.get(internal + "/v1/agents").status_code == 401
        refused = plain.post(internal + "/scripted-model/v1/messages", json={})
        assert refused.status_code == 401 and refused.json()["type"] == "error"
        assert plain.get(internal + "/v1/agents", headers={"x-api-key": api_key}).status_code == 200
    # Bound to loopback only: the machine's other addresses do not answer on that port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent; this picks the outward address
        outward = probe.getsockname()[0]
    if outward != "127.0.0.1":
        with pytest.raises(OSError):
            socket.create_connection((outward, _internal_port(server)), timeout=5).close()


def _handshake(address: tuple[str, int], ca: Path, configure: Any) -> str:
    """The TLS version negotiated with ``address`` by a client ``configure`` restricts."""
    context = ssl.create_default_context(cafile=str(ca))
    configure(context)
    with (
        socket.create_connection(address, timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=address[0]) as tls,
    ):
        return str(tls.version())


def _legacy(maximum: ssl.TLSVersion, ciphers: str) -> Any:
    def configure(context: ssl.SSLContext) -> None:
        with warnings.catch_warnings(category=DeprecationWarning, action="ignore"):
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum
        context.set_ciphers(ciphers)  # SECLEVEL=0 lets this OpenSSL offer the old protocols

    return configure


@contextlib.contextmanager
def _permissive_server(folder: Path) -> Iterator[tuple[str, int]]:
    """A TLS server that accepts TLS 1.0 and every cipher, for one handshake: the control
    showing the legacy clients below can really connect where a server allows them."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    with warnings.catch_warnings(category=DeprecationWarning, action="ignore"):
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def accept_one() -> None:
            conn, _ = listener.accept()
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

        thread = threading.Thread(target=accept_one, daemon=True)
        thread.start()
        yield listener.getsockname()[:2]
        thread.join(timeout=10)


def test_tls_needs_version_1_2_and_modern_ciphers(tls_gateway: tuple[ServerProcess, Path, str]) -> None:
    server, ca, _ = tls_gateway
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    gateway = (host, int(port))
    assert _handshake(gateway, ca, lambda context: None) == "TLSv1.3"
    assert (
        _handshake(gateway, ca, _legacy(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256")) == "TLSv1.2"
    )
    tls11 = _legacy(ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0")
    cbc = _legacy(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0")  # in uvicorn's default
    with _permissive_server(ca.parent) as permissive:
        assert _handshake(permissive, ca, tls11) == "TLSv1.1"
    with _permissive_server(ca.parent) as permissive:
        assert _handshake(permissive, ca, cbc) == "TLSv1.2"
    for refused in (tls11, cbc):
        with pytest.raises(ssl.SSLError):
            _handshake(gateway, ca, refused)


def _start_fails(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "gateway", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TETHER_API_KEYS": "k-" + secrets.token_hex(8), **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr


def test_port_in_use_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, out, err = _start_fails(["--host", "127.0.0.1", "--port", str(port)], tmp_path)
    assert status != 0
    assert "Traceback" not in out + err
    assert err.strip().splitlines() == [
        f"tether: port {port} on 127.0.0.1 is in use: stop the other process or pass --port"
    ]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (lambda folder: ["--tls-cert", str(folder / "server.pem")], "--tls-cert and --tls-key go together"),
        (
            lambda folder: [
                "--tls-cert",
                str(folder / "server.pem"),
                "--tls-key",
                str(folder / "missing.key"),
            ],
            "TLS file not found",
        ),
    ],
    ids=["cert-without-key", "missing-key"],
)
def test_unusable_tls_options_stop_the_start_with_one_line(files: Any, expected: str, tmp_path: Path) -> None:
    """Checked before the gateway's imports, so in-process: the exit carries the one line."""
    _write_pki(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data"), *files(tmp_path)])
    message = str(stopped.value.code)
    assert expected in message and "\n" not in message


def test_a_key_of_another_certificate_stops_the_process_with_one_line(tmp_path: Path) -> None:
    _, _, key = _write_pki(tmp_path)
    ca = tmp_path / "ca.pem"  # a certificate whose key is not ``key``
    status, out, err = _start_fails(["--port", "0", "--tls-cert", str(ca), "--tls-key", str(key)], tmp_path)
    assert status != 0
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot use TLS certificate" in lines[0], err
