"""A gateway for tunnel tests: ``gateway.app.create_app`` plus the tunnel wiring.

Served by uvicorn on a loopback port in a background thread of the test process, so
tests can reach the hub itself (``hub.transport_for``, waiting for agents to connect)
while clients, agents and MCP servers talk to it over real sockets. What the app's own
wiring will do (routes, public path, hub lifespan) is done here from the outside, using
only ``gateway.tunnels.wiring``. Every log record of the process is captured, so tests can
prove a secret never reached the gateway's logs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import uvicorn
from starlette.applications import Starlette

from gateway.api.auth import APIKeyMiddleware
from gateway.app import create_app
from gateway.config import Settings
from gateway.serving import bind_socket, socket_url
from gateway.tunnels import wiring
from gateway.tunnels.hub import TunnelHub
from tunnel_agent.protocol import CONNECT_PATH

T = TypeVar("T")

BASE_DOMAIN = "tunnels.tether.test"
START_TIMEOUT = 30.0


TEST_CLIENT_LOGGERS = ("websockets.client", "anthropic")
"""The test's own clients (its SDK and its hand-made agent handshakes) run in this process
too; what they log is not the gateway's output."""


class LogCapture(logging.Handler):
    """Every record of the gateway, formatted with its arguments and any traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(TEST_CLIENT_LOGGERS):
            self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class TunnelGateway:
    url: str
    api_key: str
    data_dir: Path
    logs: LogCapture
    hub: TunnelHub = field(init=False)
    loop: asyncio.AbstractEventLoop = field(init=False)

    def call(self, function: Callable[..., Awaitable[T]], *args: Any, timeout: float = 60) -> T:
        """Run ``function(*args)`` on the gateway's event loop (where the hub lives)."""
        return asyncio.run_coroutine_threadsafe(_call(function, *args), self.loop).result(timeout)

    @property
    def connect_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/v1/tunnels/connect"


async def _call(function: Callable[..., Awaitable[T]], *args: Any) -> T:
    return await function(*args)


def build_app(settings: Settings, gateway: TunnelGateway, ready: threading.Event, **hub: Any) -> Starlette:
    """The gateway app with the tunnel wiring added from outside (a no-op for the parts the
    app already wires itself); the hub is always this launcher's, with the test's settings."""
    app = create_app(settings)
    if not any(getattr(route, "path", None) == CONNECT_PATH for route in app.router.routes):
        app.router.routes.extend(wiring.routes())
    for middleware in app.user_middleware:
        if middleware.cls is APIKeyMiddleware:
            public = tuple(middleware.kwargs.get("public_paths", ("/health",)))
            middleware.kwargs["public_paths"] = (
                *public,
                *(p for p in wiring.PUBLIC_PATHS if p not in public),
            )
    original = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with original(app):
            state = app.state.gateway
            sealer = getattr(state, "keyring", None)
            async with wiring.running_hub(app, state.store, BASE_DOMAIN, sealer=sealer, **hub) as tunnel_hub:
                gateway.hub = tunnel_hub
                gateway.loop = asyncio.get_running_loop()
                ready.set()
                yield

    app.router.lifespan_context = lifespan
    return app


@contextmanager
def running_tunnel_gateway(
    data_dir: Path, log_level: int = logging.DEBUG, **hub: Any
) -> Iterator[TunnelGateway]:
    """``hub`` overrides ``HubSettings`` fields (short ping deadlines for tests); benchmarks
    pass a higher ``log_level`` so capturing debug records does not weigh on timings."""
    logs = LogCapture()
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(logs)
    root.setLevel(log_level)
    api_key = "test-" + secrets.token_hex(16)
    settings = Settings(
        data_dir=data_dir,
        api_keys=[api_key],
        model_base_url="http://127.0.0.1:9/unused",
        database_url=f"sqlite:///{data_dir / 'tether.db'}",
    )
    sock = bind_socket("127.0.0.1", 0)
    gateway = TunnelGateway(socket_url(sock), api_key, data_dir, logs)
    ready = threading.Event()
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(settings, gateway, ready, **hub),
            log_config=None,
            log_level=max(log_level, logging.INFO),
            lifespan="on",
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError("tunnel gateway did not start:\n" + logs.text)
        yield gateway
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        root.removeHandler(logs)
        root.setLevel(previous_level)


FAST_PINGS: dict[str, Any] = {"ping_interval": 0.2, "ping_timeout": 1.0, "connect_wait": 5.0}
"""``running_tunnel_gateway`` settings that notice a lost agent within about a second."""


def sdk_for(gateway: TunnelGateway) -> anthropic.Anthropic:
    """The official SDK on the test gateway with its key; retries off, so nothing is sent twice."""
    return anthropic.Anthropic(base_url=gateway.url, api_key=gateway.api_key, max_retries=0, timeout=30)
