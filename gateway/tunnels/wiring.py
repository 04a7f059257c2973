"""What the gateway app plugs in to serve tunnels.

In ``create_app``::

    from gateway.tunnels import wiring as tunnel_wiring

    # routes (built before the lifespan, so they find the hub on app.state at request time)
    routes += tunnel_wiring.routes()
    # middleware: the agents authenticate with their tunnel token, not an API key
    Middleware(APIKeyMiddleware, keys=..., public_paths=("/health", *tunnel_wiring.PUBLIC_PATHS))
    # lifespan, once the store (and key ring) exist
    async with tunnel_wiring.running_hub(app, store, settings.tunnel_base_domain, sealer=keyring) as hub:
        ...  # pass hub.transport_for to the MCP client
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.routing import BaseRoute

from gateway.store.base import Store
from gateway.tunnels.addressing import DEFAULT_BASE_DOMAIN
from gateway.tunnels.hub import HubSettings, TunnelHub
from gateway.tunnels.tokens import Sealer
from tunnel_agent.protocol import CONNECT_PATH

PUBLIC_PATHS = (CONNECT_PATH,)
"""Paths the API-key middleware must let through (the hub authenticates them itself)."""


def create_hub(
    store: Store,
    base_domain: str = DEFAULT_BASE_DOMAIN,
    *,
    sealer: Sealer | None = None,
    **settings: Any,
) -> TunnelHub:
    """``settings`` are ``HubSettings`` fields (``ping_interval``, ``connect_wait``, ...)."""
    return TunnelHub(store, sealer, HubSettings(base_domain=base_domain, **settings))


def routes() -> list[BaseRoute]:
    """REST ``/v1/tunnels...`` and the agents' WebSocket ``/v1/tunnels/connect``."""
    from gateway.api import tunnels

    return list(tunnels.routes)


@asynccontextmanager
async def running_hub(
    app: Any,
    store: Store,
    base_domain: str = DEFAULT_BASE_DOMAIN,
    *,
    sealer: Sealer | None = None,
    **settings: Any,
) -> AsyncIterator[TunnelHub]:
    """Create the hub, publish it as ``app.state.tunnel_hub``, and close every agent
    connection (1001) on shutdown so agents reconnect to the next gateway at once."""
    hub = create_hub(store, base_domain, sealer=sealer, **settings)
    app.state.tunnel_hub = hub
    try:
        yield hub
    finally:
        await hub.close()
