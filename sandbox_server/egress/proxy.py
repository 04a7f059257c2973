"""The egress proxy of one sandbox: an HTTP proxy on a Unix socket, the sandbox's only way out.

The sandbox has no network interface but loopback. Its commands reach this
server through a forwarder (``forwarder.py``) that listens on
``127.0.0.1:3128`` inside the sandbox and relays each connection to the Unix
socket, which is bind-mounted into every command's mount namespace.

What a client may send:

- absolute-form plain HTTP (``GET http://host/path``): each request is admitted
  on its own (a keep-alive connection may name different hosts), forwarded
  without any substitution, since it would travel in clear text;
- ``CONNECT host:port``: admitted once; then either a byte tunnel (no
  credential applies to the host: the proxy never sees inside), or TLS
  interception for hosts where a credential may be substituted: the proxy
  terminates TLS with a leaf certificate for the host, requires every
  request's ``Host`` to name that same host (no domain fronting towards
  another origin on a shared front end), substitutes secrets and forwards the
  request over its own verified TLS connection. Every response there is
  decoded and scrubbed (``exchange``), and the connection is never upgraded
  to another protocol.

Every decision is logged by ``Gate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Callable
from pathlib import Path

from sandbox_server.egress.credentials import Vault
from sandbox_server.egress.exchange import Connection, Exchange, Outcome
from sandbox_server.egress.gate import Admission, Decision, Gate, split_authority
from sandbox_server.egress.http import (
    MAX_HEAD,
    READ_SIZE,
    HttpError,
    RequestHead,
    error_response,
    read_request_head,
)
from sandbox_server.egress.policy import InvalidHost, parse_host
from sandbox_server.egress.tls import LeafCertificates

MAX_CONNECTIONS = 256
"""Client connections handled at once; more are answered 503 (bounds the host's file descriptors)."""
CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 120.0
"""How long a client connection may sit idle between requests."""

_CLOSED = (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError)
ESTABLISHED = b"HTTP/1.1 200 Connection Established\r\n\r\n"


class EgressProxy:
    """Serves one sandbox. ``leaves`` is ``None`` when there is nothing to intercept for (no credentials)."""

    def __init__(
        self,
        gate: Gate,
        *,
        vault: Vault,
        leaves: LeafCertificates | None,
        upstream_tls: ssl.SSLContext,
    ) -> None:
        self.gate = gate
        self.vault = vault
        self.leaves = leaves
        self.upstream_tls = upstream_tls
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, socket_path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=str(socket_path), limit=MAX_HEAD)
        os.chmod(socket_path, 0o600)  # the directory is private too; this is belt and braces

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        client = Connection(reader, writer)
        try:
            if len(self._tasks) > MAX_CONNECTIONS:
                await client.send(error_response(503, "too many connections through the proxy"))
                return
            request = await _next_request(client)
            if request is None:
                return
            if request.method == "CONNECT":
                await self._connect(client, request)
            else:
                await self._plain(client, request)
        except HttpError as exc:
            with contextlib.suppress(*_CLOSED):
                await client.send(error_response(exc.status, exc.message))
        except (*_CLOSED, TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            client.close()

    async def _open(self, admission: Admission, method: str, *, tls: bool) -> Connection:
        """Dial the admitted addresses in order; 502 (logged) when none answers or TLS fails to verify."""
        host = admission.host
        reason = "connection failed"
        for ip, port in admission.addresses:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(
                        str(ip),
                        port,
                        ssl=self.upstream_tls if tls else None,
                        server_hostname=host.name if tls else None,
                        ssl_handshake_timeout=HANDSHAKE_TIMEOUT if tls else None,
                        limit=MAX_HEAD,
                    )
                return Connection(reader, writer)
            except ssl.SSLCertVerificationError as exc:
                reason = f"upstream certificate not trusted: {exc.verify_message}"
                break
            except ssl.SSLError as exc:
                reason = f"upstream TLS failed: {exc.reason}"
            except TimeoutError:
                reason = "connection timed out"
            except OSError as exc:
                reason = exc.strerror or type(exc).__name__
        self.gate.record(method, host.name, admission.port, "error", reason)
        raise HttpError(502, f"could not reach {host.name}:{admission.port}: {reason}")

    # ------------------------------------------------------------------ plain HTTP

    async def _plain(self, client: Connection, request: RequestHead | None) -> None:
        upstream: Connection | None = None
        upstream_key: tuple[str, int] | None = None
        try:
            while request is not None:
                host_text, port, authority, origin = _split_absolute(request.target)
                admission = await self.gate.admit(request.method, host_text, port)
                key = (admission.host.name, port)
                if upstream is None or upstream_key != key or upstream.reader.at_eof():
                    if upstream is not None:
                        upstream.close()
                    upstream = await self._open(admission, request.method, tls=False)
                    upstream_key = key
                request.target = origin
                request.headers.set("Host", authority)

                def record(
                    _names: list[str], admission: Admission = admission, method: str = request.method
                ) -> None:
                    self.gate.record(method, admission.host.name, admission.port, "allow", admission.reason)

                exchange = Exchange(client, upstream, request, rewrite=None, before_send=record)
                outcome = await _run(exchange, client)
                if outcome is None:
                    return
                if outcome.upgraded:
                    await splice(client, upstream)
                    return
                if not outcome.upstream_reusable:
                    upstream.close()
                    upstream = None
                if not outcome.client_keep_alive:
                    return
                request = await _next_request(client)
        finally:
            if upstream is not None:
                upstream.close()

    # ------------------------------------------------------------------ CONNECT

    async def _connect(self, client: Connection, request: RequestHead) -> None:
        host_text, port = split_authority(request.target, None)
        admission = await self.gate.admit("CONNECT", host_text, port)
        if self.leaves is not None and self.vault.applies_to(admission.host):
            self.gate.record("CONNECT", admission.host.name, port, "allow", admission.reason, tls="intercept")
            await client.send(ESTABLISHED)
            await self._intercept(client, admission, self.leaves)
            return
        upstream = await self._open(admission, "CONNECT", tls=False)
        self.gate.record("CONNECT", admission.host.name, port, "allow", admission.reason, tls="tunnel")
        try:
            await client.send(ESTABLISHED)
            await splice(client, upstream)
        finally:
            upstream.close()

    async def _intercept(self, client: Connection, admission: Admission, leaves: LeafCertificates) -> None:
        host = admission.host
        try:
            await client.writer.start_tls(leaves.context_for(host), ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (*_CLOSED, TimeoutError) as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            self.gate.record(
                "CONNECT", host.name, admission.port, "error", f"client TLS handshake failed: {reason}"
            )
            return
        rewrite = self.vault.rewrite_for(host)
        upstream: Connection | None = None
        try:
            while (request := await _next_request(client)) is not None:
                self._check_intercepted(request, admission)
                if upstream is None or upstream.reader.at_eof():
                    if upstream is not None:
                        upstream.close()
                    upstream = await self._open(admission, request.method, tls=True)

                def record(names: list[str], method: str = request.method) -> None:
                    self.gate.record(
                        method,
                        host.name,
                        admission.port,
                        "allow",
                        admission.reason,
                        tls="intercept",
                        substituted=names,
                    )

                def failed(error: HttpError, method: str = request.method) -> None:
                    # A refused upgrade or unreadable response is a decision too (upstream failures
                    # are logged as errors); the messages never hold a secret.
                    decision: Decision = "deny" if error.status == 501 else "error"
                    self.gate.record(
                        method, host.name, admission.port, decision, error.message, tls="intercept"
                    )

                exchange = Exchange(client, upstream, request, rewrite=rewrite, before_send=record)
                outcome = await _run(exchange, client, failed)
                if outcome is None or outcome.upgraded:
                    return  # never spliced: ``Exchange`` refuses upgrades where it rewrites
                if not outcome.upstream_reusable:
                    upstream.close()
                    upstream = None
                if not outcome.client_keep_alive:
                    return
        finally:
            if upstream is not None:
                upstream.close()

    def _check_intercepted(self, request: RequestHead, admission: Admission) -> None:
        """A request inside an intercepted tunnel must be for the tunnel's host (421, logged, otherwise)."""
        host = admission.host
        target = request.target
        if target.lower().startswith("https://"):
            host_text, port, authority, origin = _split_absolute("http://" + target[8:], default_port=443)
            if not _same_host(host_text, admission) or port != admission.port:
                self.gate.record(
                    request.method, host.name, admission.port, "deny", "request names another host"
                )
                raise HttpError(421, "the request names a host other than the tunnel's")
            request.target = origin
            request.headers.set("Host", authority)
        elif not target.startswith("/") and not (target == "*" and request.method == "OPTIONS"):
            raise HttpError(400, "malformed request target")
        named = request.headers.get_all("host")
        if not named:
            request.headers.set(
                "Host", host.name if admission.port == 443 else f"{host.name}:{admission.port}"
            )
            return
        try:
            host_text, _ = split_authority(named[0], 443)
        except HttpError:
            host_text = ""
        if len(named) != 1 or not _same_host(host_text, admission):
            self.gate.record(
                request.method, host.name, admission.port, "deny", "Host header names another host"
            )
            raise HttpError(421, "the Host header names a host other than the tunnel's")


def _same_host(host_text: str, admission: Admission) -> bool:
    try:
        return parse_host(host_text) == admission.host
    except InvalidHost:
        return False


async def _next_request(client: Connection) -> RequestHead | None:
    try:
        async with asyncio.timeout(IDLE_TIMEOUT):
            return await read_request_head(client.reader)
    except TimeoutError:
        return None


async def _run(
    exchange: Exchange, client: Connection, failed: Callable[[HttpError], None] | None = None
) -> Outcome | None:
    """Run one exchange; on an ``HttpError`` answer it if nothing was sent yet, and report ``None`` (close)."""
    try:
        return await exchange.run()
    except HttpError as exc:
        if failed is not None:
            failed(exc)
        if not exchange.responded:
            with contextlib.suppress(*_CLOSED):
                await client.send(error_response(exc.status, exc.message))
        return None


def _split_absolute(target: str, default_port: int = 80) -> tuple[str, int, str, str]:
    """``http://host:port/p?q`` -> ``(host, port, authority, "/p?q")``; 400 for anything else."""
    scheme, sep, rest = target.partition("://")
    if not sep:
        raise HttpError(400, "this is a proxy: requests must use an absolute http:// URL or CONNECT")
    if scheme.lower() == "https":
        raise HttpError(400, "https:// URLs are reached with CONNECT")
    if scheme.lower() != "http":
        raise HttpError(400, f"unsupported URL scheme {scheme[:16]!r}")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, path = rest[:end], rest[end:]
    if "@" in authority:
        raise HttpError(400, "user information in the URL is not supported")
    host, port = split_authority(authority, default_port)
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    return host, port, authority, path


async def splice(a: Connection, b: Connection) -> None:
    """Copy bytes both ways until both directions ended; an error in one ends both."""

    async def pump(source: Connection, sink: Connection) -> None:
        try:
            while data := await source.reader.read(READ_SIZE):
                sink.writer.write(data)
                await sink.writer.drain()
            if sink.writer.can_write_eof():
                sink.writer.write_eof()  # half-close: the other direction may still be talking
            else:
                a.close()
                b.close()
        except _CLOSED:
            a.close()
            b.close()

    await asyncio.gather(pump(a, b), pump(b, a))
