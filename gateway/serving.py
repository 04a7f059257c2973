"""Run an ASGI app on a loopback socket and announce its URL.

Every Tether server (gateway, sandbox, scripted model) binds its socket before
uvicorn starts, so port 0 works and the parent process learns the real port from
one line on stdout: ``listening on http://HOST:PORT`` (``https://`` when serving TLS).

With TLS, a gateway also serves the same app over plain HTTP on a second, loopback-only socket
(``internal``) for its calls to itself: no certificate an operator can get covers 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import sys
from dataclasses import dataclass
from typing import Any

import uvicorn

READY_PREFIX = "listening on "
TLS_MINIMUM = ssl.TLSVersion.TLSv1_2
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
"""Forward-secret AEAD suites only, for TLS 1.2 (TLS 1.3's suites are all modern already);
uvicorn's default, ``TLSv1``, also offers CBC and static-RSA suites."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a TCP listening socket (port 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it every keep-alive response waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def bind_or_exit(host: str, port: int, program: str = "tether") -> socket.socket:
    """``bind_socket``, or one line naming the fix and a non-zero exit (no traceback) when the
    address cannot be had: a port in use is the usual first failure of a second start."""
    try:
        return bind_socket(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            sys.exit(f"{program}: port {port} on {host} is in use: stop the other process or pass --port")
        if exc.errno == errno.EACCES:
            sys.exit(f"{program}: not allowed to listen on port {port} on {host}: pass --port above 1023")
        sys.exit(
            f"{program}: cannot listen on {host} port {port}: {exc.strerror or exc}: pass --host or --port"
        )


@dataclass(frozen=True)
class TLSFiles:
    """A PEM certificate chain and its private key: the server then speaks HTTPS only."""

    cert: str
    key: str

    def check(self) -> str | None:
        """Why these files cannot serve TLS (None when they can), found before uvicorn starts so
        the operator reads one line instead of a traceback from inside the server."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            return f"TLS file not found: {exc.filename}"
        except (ssl.SSLError, OSError, ValueError) as exc:
            return f"cannot use TLS certificate {self.cert} with key {self.key}: {exc}"
        return None


def socket_url(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


def serve(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
    """Serve ``app`` until interrupted, printing the ready line once the socket is bound."""
    serve_socket(app, bind_socket(host, port), log_level)


def serve_socket(
    app: Any,
    sock: socket.socket,
    log_level: str = "warning",
    tls: TLSFiles | None = None,
    internal: socket.socket | None = None,
) -> None:
    """Serve on an already bound socket (when the app must know its own URL before starting);
    with ``tls``, the socket speaks HTTPS only (TLS 1.2 at least). ``internal``, a loopback
    socket, serves the same app over plain HTTP in the same event loop, for the app's own calls
    to itself; it starts and stops with the main server, which owns the lifespan and signals."""
    watched = _LifespanWatch(app)
    config = uvicorn.Config(
        watched,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
        ssl_ciphers=TLS12_CIPHERS,
    )
    config.load()
    if config.ssl is not None:
        config.ssl.minimum_version = TLS_MINIMUM
    server = uvicorn.Server(config)
    watched.server = server

    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        if server.started:
            print(f"{READY_PREFIX}{socket_url(sock, tls=tls is not None)}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    side = None
    if internal is not None:
        side = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, lifespan="off", timeout_graceful_shutdown=5)
        )
        side.capture_signals = contextlib.nullcontext  # type: ignore[assignment, method-assign]
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_serve_together(server, sock, side, internal))
    finally:
        sock.close()
        if internal is not None:
            internal.close()
    if not server.started or watched.died:
        sys.exit(1)


async def _serve_together(
    server: uvicorn.Server,
    sock: socket.socket,
    side: uvicorn.Server | None,
    internal: socket.socket | None,
) -> None:
    if side is None or internal is None:
        await server.serve(sockets=[sock])
        return
    side_task = asyncio.create_task(side.serve(sockets=[internal]))
    # One without the other is no working gateway: the end of either ends both.
    side_task.add_done_callback(lambda _: setattr(server, "should_exit", True))
    try:
        await server.serve(sockets=[sock])
    finally:
        side.should_exit = True
        await side_task


class _LifespanWatch:
    """Stops the server when the app's lifespan ends without being asked to.

    uvicorn logs a lifespan that fails after startup and goes on serving; the app's store
    and background work are gone by then, so every request would fail while health checks
    pass. Exiting (non-zero) lets the supervisor restart a whole gateway instead.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.server: uvicorn.Server | None = None
        self.died = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        asked_to_stop = False

        async def receiving() -> Any:
            nonlocal asked_to_stop
            message = await receive()
            asked_to_stop = asked_to_stop or message["type"] == "lifespan.shutdown"
            return message

        try:
            await self.app(scope, receiving, send)
        finally:
            if not asked_to_stop and self.server is not None and self.server.started:
                self.died = True
                self.server.should_exit = True
