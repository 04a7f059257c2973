"""Stand-ins for the egress tests: a test CA, recording HTTP(S) servers, a credentials endpoint.

Every server binds its loopback socket before its thread starts, so a client
may connect as soon as the constructor returns (the kernel queues it): no
sleeps anywhere. Each server records what it received *before* answering, so
once a client has its response the record is there.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socket import socket
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


class TestPKI:
    """A CA for upstream servers (passed to the sandbox as ``--upstream-ca``) and certificates it issues."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tether test upstream CA")])
        now = dt.datetime.now(dt.UTC)
        self._name = name
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_path = directory / "upstream-ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, names: list[str]) -> ssl.SSLContext:
        """A server context with a certificate for ``names`` (DNS names or IP addresses)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        stem = self.directory / f"server-{x509.random_serial_number()}"
        cert_path, key_path = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context


@dataclass
class Received:
    """One request as a test server saw it (chunked bodies decoded)."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int
    """A number per TCP connection, to observe keep-alive."""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def raw(self) -> str:
        """Everything received, as text, for "did the secret arrive here" checks."""
        lines = [f"{self.method} {self.path}", *(f"{k}: {v}" for k, v in self.headers)]
        return "\n".join(lines) + "\n\n" + self.body.decode("latin-1")


Responder = Callable[[Received], tuple[int, list[tuple[str, str]], bytes]]


def default_responder(received: Received) -> tuple[int, list[tuple[str, str]], bytes]:
    """``/echo``: the request back as JSON (``?chunked`` for a chunked reply); ``/big?N``: N bytes; else ``ok``."""
    if received.path.startswith("/big?"):
        return 200, [("Content-Type", "application/octet-stream")], b"x" * int(received.path[5:])
    if received.path.startswith("/echo"):
        body = json.dumps(
            {"headers": received.headers, "body": received.body.decode("latin-1"), "path": received.path}
        ).encode()
        if "chunked" in received.path:
            return 200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")], body
        return 200, [("Content-Type", "application/json")], body
    return 200, [("Content-Type", "text/plain")], b"ok\n"


@dataclass
class RecordingServer:
    """A threaded HTTP/1.1 server on loopback (TLS when ``tls`` is given) recording every request."""

    tls: ssl.SSLContext | None = None
    responder: Responder = default_responder
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        owner = self
        connections = iter(range(1, 1 << 30))
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            connection_id = 0

            def setup(self) -> None:
                super().setup()
                with lock:
                    self.connection_id = next(connections)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                received = Received(
                    self.command, self.path, list(self.headers.items()), self._body(), self.connection_id
                )
                with lock:
                    owner.received.append(received)
                status, headers, body = owner.responder(received)
                self.send_response(status)
                chunked = any(k.lower() == "transfer-encoding" for k, _ in headers)
                for key, value in headers:
                    self.send_header(key, value)
                if not chunked:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if chunked:
                    half = len(body) // 2
                    for part in (body[:half], body[half:]):
                        if part:
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                elif self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_HEAD = _handle

        tls = self.tls

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def finish_request(self, request: Any, client_address: Any) -> None:
                if tls is not None:
                    assert isinstance(request, socket)
                    request = tls.wrap_socket(request, server_side=True)
                super().finish_request(request, client_address)

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up or failed TLS is part of the tests

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def everything_received(self) -> str:
        return "\n".join(r.raw() for r in self.received)


def credentials_responder(token: str, document: dict[str, Any]) -> Responder:
    """The gateway's credentials endpoint: the document for the right bearer token, 401 otherwise."""

    def respond(received: Received) -> tuple[int, list[tuple[str, str]], bytes]:
        if received.header("Authorization") != f"Bearer {token}":
            return 401, [("Content-Type", "application/json")], b'{"error": "unauthorized"}'
        return 200, [("Content-Type", "application/json")], json.dumps(document).encode()

    return respond
