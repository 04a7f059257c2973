"""The agent's local admin endpoints: ``/ready`` for orchestrators, ``/metrics`` for Prometheus.

Bound to loopback by default: it is for the on-prem operator, never reachable through the
tunnel (the relay only connects to allow-listed targets).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tunnel_agent.metrics import AgentMetrics

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def admin_app(metrics: AgentMetrics) -> Starlette:
    async def ready(request: Request) -> Response:
        up = int(sum(metrics.connections.values.values()))
        return JSONResponse({"ready": up > 0, "connections": up}, status_code=200 if up else 503)

    async def render(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type=PROMETHEUS_TEXT)

    return Starlette(routes=[Route("/ready", ready), Route("/metrics", render)])


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


class AdminServer(uvicorn.Server):
    """Signals belong to the agent, which closes its tunnel links (1001) before exiting;
    uvicorn would otherwise take SIGTERM and re-raise it, killing the agent mid-close."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def admin_server(metrics: AgentMetrics) -> AdminServer:
    return AdminServer(
        uvicorn.Config(admin_app(metrics), log_level="warning", lifespan="off", access_log=False)
    )
