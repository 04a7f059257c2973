"""Serve the sandbox's ASGI app on a bound socket and announce its URL, without the gateway.

The same contract as ``gateway.serving`` (the starter reads one ``listening on URL`` line on
stdout; port 0 works because the socket is bound before uvicorn starts), kept here so a
sandbox process never imports the gateway package.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

READY_PREFIX = "listening on "
"""The ready line's prefix (``gateway.serving.READY_PREFIX`` is the same text)."""


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP listening socket with ``TCP_NODELAY`` (so keep-alive answers never wait for an ACK)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(app: Any, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, printing the ready line once uvicorn has started."""
    import uvicorn

    sock = bind_socket(host, port)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
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
    if not server.started:
        sys.exit(1)
