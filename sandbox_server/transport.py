"""How ``tether sandbox`` is reached: stdio for its parent alone, or streamable HTTP behind its
bearer token, with DNS-rebinding protection on loopback binds; and a SIGTERM that unwinds.

Kept apart from ``server`` (what the tools do) and its ``run`` (what a sandbox process sets up
before serving), so each reads on its own.
"""

from __future__ import annotations

import signal
import sys
import threading

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp

from sandbox_server import auth
from sandbox_server.memory_mounts import MemoryMounts
from sandbox_server.memory_routes import MemoryRoutes
from sandbox_server.placement import Placement, PlacementRoutes
from sandbox_server.serving import serve

MCP_PATH = "/mcp"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def transport_security(host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection for loopback binds; none when bound for other machines.

    The protection stops a browser page from reaching a server on localhost. A
    sandbox bound to another address is reached by the gateway under whatever
    name the network gives it (say a container name), and who may connect there
    is the network's business, so the ``Host`` header is not checked.
    """
    if host in _LOOPBACK_HOSTS:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    return TransportSecuritySettings(enable_dns_rebinding_protection=False)


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind the stack (``SystemExit``) so ``run``'s cleanup happens.

    uvicorn handles SIGTERM itself while serving, then raises it again once it
    has stopped; with the default action the process would die right there,
    before the egress proxy's directory or a Docker container is cleaned up.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def serve_toolset(
    server: MCPServer,
    host: str,
    port: int,
    stdio: bool,
    token: str | None,
    placement: Placement | None = None,
) -> None:
    """Over stdio no token is needed (only the parent holds the pipes); over HTTP every request
    must carry it (``sandbox_server.auth``), and without one nothing is served. ``placement``
    takes the session's resources from the gateway beside ``/mcp`` (HTTP only)."""
    if stdio:
        server.run("stdio")
        return
    if not token:
        sys.exit(f"tether sandbox: {auth.MISSING_TOKEN}")
    # An SSE stream per call, not a plain JSON answer (tried: ~1 ms less server CPU a call):
    # a caller that goes away (an interrupt) closes the stream, which cancels the call and
    # kills its command; a JSON answer is awaited to the end whatever the caller does.
    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, transport_security=transport_security(host), host=host
    )
    served: ASGIApp = app
    if placement is not None:
        served = MemoryRoutes(PlacementRoutes(app, placement), MemoryMounts(placement))
    serve(auth.BearerAuth(served, token), host, port)
