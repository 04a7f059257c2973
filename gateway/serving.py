"""Run an ASGI app on a loopback socket and announce its URL.

Every Tether server (gateway, sandbox, scripted model) binds its socket before
uvicorn starts, so port 0 works and the parent process learns the real port from
one line on stdout: ``listening on http://HOST:PORT``.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import uvicorn

READY_PREFIX = "listening on "


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


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
    """Serve ``app`` until interrupted, printing the ready line once the socket is bound."""
    serve_socket(app, bind_socket(host, port), log_level)


def serve_socket(app: Any, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve on an already bound socket (when the app must know its own URL before starting)."""
    watched = _LifespanWatch(app)
    config = uvicorn.Config(watched, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    watched.server = server

    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        if server.started:
            print(f"{READY_PREFIX}{socket_url(sock)}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started or watched.died:
        sys.exit(1)


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
