"""Assembling the MCP gateway, and the three things ``gateway.app`` adds to use it.

In ``gateway/app.py``::

    from gateway.mcp_gateway import wiring as mcp_gateway

    # in the lifespan, once store and keyring exist (inside the task group is fine):
    async with mcp_gateway.lifespan(app, store, keyring, policies or PolicySet(), settings):
        ...
    # routes:
    *mcp_gateway.routes(),
    # APIKeyMiddleware: these prefixes are public (the MCP front door does its own auth):
    mcp_gateway.PUBLIC_PATH_PREFIXES

Route handlers reach the running gateway as ``request.app.state.mcp_gateway``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.transport_security import TransportSecuritySettings
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway.config import Settings
from gateway.mcp_gateway.access import Access
from gateway.mcp_gateway.audit import AuditLog
from gateway.mcp_gateway.catalog import Catalog
from gateway.mcp_gateway.credentials import Credentials
from gateway.mcp_gateway.endpoint import METADATA_PATH, Endpoint
from gateway.mcp_gateway.express import Express
from gateway.mcp_gateway.governance import Governance
from gateway.mcp_gateway.http_upstream import TransportFor
from gateway.mcp_gateway.notifications import Broadcaster
from gateway.mcp_gateway.ratelimit import RateLimiter
from gateway.mcp_gateway.registry import Changes, Registry
from gateway.mcp_gateway.settings import McpGatewaySettings
from gateway.mcp_gateway.upstreams import UpstreamPool
from gateway.mcp_gateway.virtual_server import GATEWAY_CLIENT_INFO, Handlers, build_server
from gateway.mcp_gateway.watcher import ALL_LISTS
from gateway.store.base import Body, Store
from gateway.vault.keyring import DecryptionFailed, KeyRing
from policies.engine import PolicySet

log = logging.getLogger("tether.mcp_gateway")

PUBLIC_PATH_PREFIXES = ("/mcp/", "/.well-known/oauth-protected-resource/mcp/")
"""Paths ``APIKeyMiddleware`` must let through (prefix match): the front door authenticates them."""
SDK_BODY_LIMIT = 64 * 1024 * 1024
"""The SDK's own body limit; the front door's per-virtual-server limit always applies first."""


def _identity(body: Body) -> tuple[Any, ...]:
    """What requires a restart when it changes (metadata and timeouts do not)."""
    return (body["transport"], body.get("_sealed_env"), tuple(body.get("vault_ids") or ()))


class McpGateway:
    def __init__(
        self,
        store: Store,
        keyring: KeyRing,
        policies: PolicySet,
        api_keys: list[str],
        settings: McpGatewaySettings,
        transport_for: TransportFor | None = None,
    ) -> None:
        self.settings = settings
        self.registry = Registry(store, keyring)
        self.pool = UpstreamPool(settings, self._upstream_changed, transport_for)
        self.catalog = Catalog(self.pool, settings.catalog_ttl, settings.listing_timeout)
        self.credentials = Credentials(store, keyring)
        self.governance = Governance(policies, settings)
        self.audit = AuditLog(store)
        self.broadcaster = Broadcaster(settings.session_idle_timeout)
        self.access = Access(api_keys, settings.jwt_secret or keyring.derive("mcp-gateway-token"))
        self.limiter = RateLimiter()
        self.handlers = Handlers(
            self.registry, self.catalog, self.pool, self.credentials, self.governance, self.audit
        )
        self.server = build_server(self.handlers, self.broadcaster)
        self.server.streamable_http_app(
            streamable_http_path="/",
            # Every request is authenticated with a header a browser cannot add cross-origin,
            # so the Host allow-list (DNS rebinding protection) would only refuse real hostnames.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=max(SDK_BODY_LIMIT, settings.max_request_bytes),
            session_idle_timeout=settings.session_idle_timeout,
        )
        self.endpoint = Endpoint(
            self.registry,
            self.access,
            self.governance,
            self.limiter,
            self.audit,
            self.broadcaster,
            self.server.session_manager,
            settings.public_url,
            self.handlers.view,
            Express(self.handlers, lambda: self.server.server_info_stamp, GATEWAY_CLIENT_INFO)
            if settings.express
            else None,
        )
        self.registry.subscribe(self._registry_changed)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[McpGateway]:
        """Serve until the context exits; then every stdio child is stopped and reaped."""
        async with self.server.session_manager.run(), anyio.create_task_group() as tasks:
            await tasks.start(self.pool.run)
            if self.settings.config_file is not None:
                await self.registry.apply_config(self.settings.config_file)
            await self.registry.refresh()
            tasks.start_soon(self.registry.sync_forever, self.settings.registry_sync_seconds)
            try:
                yield self
            finally:
                self.broadcaster.close_all()
                tasks.cancel_scope.cancel()

    async def _registry_changed(self, changes: Changes) -> None:
        self.credentials.forget()
        snapshot = self.registry.snapshot
        for name in sorted(changes.servers):
            body = snapshot.servers.get(name)
            current = self.pool.get(name)
            if body is None:
                await self.pool.remove(name)
            elif current is None or _identity(current.body) != _identity(body):
                await self._start(body)
            else:
                current.body = body
            await self._upstream_changed(name, ALL_LISTS)
        for name in sorted(changes.virtual_servers):
            if name in snapshot.virtual_servers:
                await self.broadcaster.publish(name, ALL_LISTS)
            else:
                self.broadcaster.close(name)
                self.catalog.forget_view(name)

    async def _start(self, body: Body) -> None:
        try:
            env = self.registry.stdio_env(body)
        except DecryptionFailed:
            log.error(
                "MCP server %s: its env cannot be decrypted with this keyring; not started", body["name"]
            )
            await self.pool.remove(body["name"])
            return

        async def watch_headers() -> dict[str, str]:
            current = self.registry.server(body["name"]) or body
            return (await self.credentials.for_upstream(current.get("vault_ids") or [], current)).headers

        await self.pool.put(body, env, watch_headers)

    async def _upstream_changed(self, upstream: str, kinds: frozenset[str]) -> None:
        """An upstream's lists changed: refetch lazily, tell every virtual server selecting it."""
        self.catalog.invalidate(upstream)
        for name, virtual in self.registry.snapshot.virtual_servers.items():
            if any(selection["server"] == upstream for selection in virtual["servers"]):
                await self.broadcaster.publish(name, kinds)

    def health(self, name: str) -> dict[str, Any] | None:
        return self.pool.health(name)


def create_mcp_gateway(
    store: Store,
    keyring: KeyRing,
    policies: PolicySet,
    settings: Settings,
    mcp_settings: McpGatewaySettings | None = None,
    transport_for: TransportFor | None = None,
) -> McpGateway:
    return McpGateway(
        store,
        keyring,
        policies,
        settings.api_keys,
        mcp_settings or McpGatewaySettings.from_env(),
        transport_for,
    )


@asynccontextmanager
async def lifespan(
    app: Any,
    store: Store,
    keyring: KeyRing,
    policies: PolicySet,
    settings: Settings,
    mcp_settings: McpGatewaySettings | None = None,
    transport_for: TransportFor | None = None,
) -> AsyncIterator[McpGateway]:
    """Run the MCP gateway for the app's lifetime, reachable as ``app.state.mcp_gateway``."""
    gateway = create_mcp_gateway(store, keyring, policies, settings, mcp_settings, transport_for)
    async with gateway.running():
        app.state.mcp_gateway = gateway
        try:
            yield gateway
        finally:
            app.state.mcp_gateway = None


def running_gateway(app: Any) -> McpGateway:
    gateway: McpGateway | None = getattr(app.state, "mcp_gateway", None)
    if gateway is None:
        raise RuntimeError("the MCP gateway is not running")
    return gateway


class _FrontDoor:
    """ASGI app for ``/mcp/{name}`` that finds the running gateway at request time."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await running_gateway(scope["app"]).endpoint(scope, receive, send)


async def _resource_metadata(request: Request) -> Response:
    return await running_gateway(request.app).endpoint.resource_metadata(request)


def routes() -> list[Route]:
    from gateway.api import mcp_servers

    return [
        Route("/mcp/{name}", endpoint=_FrontDoor()),
        Route(METADATA_PATH, endpoint=_resource_metadata, methods=["GET"]),
        *mcp_servers.routes,
    ]
