"""Telling connected clients that a virtual server's lists changed, in both protocol eras.

- 2026-07-28 clients hold a ``subscriptions/listen`` stream. Each virtual server has its
  own subscription bus and listen handler, so an event reaches only that server's
  listeners.
- Legacy (2025-11-25) clients hold a session with a standalone GET stream. A server
  middleware records each session's latest ``ServerSession`` (keyed by the
  ``Mcp-Session-Id`` of the request, under the virtual server it was opened on), and a
  change is sent on that standalone stream. Sessions are forgotten when the client
  deletes them, when the SDK answers 404 for them, or after the idle timeout.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import mcp.types as mcp_types
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import (
    InMemorySubscriptionBus,
    ListenHandler,
    PromptsListChanged,
    ResourcesListChanged,
    ServerEvent,
    ToolsListChanged,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.mcp_gateway.context import request_info

log = logging.getLogger("tether.mcp_gateway")

SEND_TIMEOUT = 2.0
EVENTS: dict[str, ServerEvent] = {
    "tools": ToolsListChanged(),
    "resources": ResourcesListChanged(),
    "prompts": PromptsListChanged(),
}


class Broadcaster:
    def __init__(self, session_idle_timeout: float) -> None:
        self.session_idle_timeout = session_idle_timeout
        self._buses: dict[str, InMemorySubscriptionBus] = {}
        self._handlers: dict[str, ListenHandler] = {}
        self._legacy: dict[str, dict[str, tuple[ServerSession, float]]] = {}

    def _handler(self, virtual_server: str) -> ListenHandler:
        handler = self._handlers.get(virtual_server)
        if handler is None:
            bus = self._buses[virtual_server] = InMemorySubscriptionBus()
            handler = self._handlers[virtual_server] = ListenHandler(bus)
        return handler

    async def listen(
        self, ctx: ServerRequestContext[Any, Any], params: mcp_types.SubscriptionsListenRequestParams
    ) -> mcp_types.SubscriptionsListenResult:
        """The ``subscriptions/listen`` handler: one stream on the caller's virtual server's bus."""
        name = request_info(ctx).virtual_server["name"]
        return await self._handler(name)(ctx, params)

    def track(self, virtual_server: str, session_id: str, session: ServerSession) -> None:
        self._legacy.setdefault(virtual_server, {})[session_id] = (session, time.monotonic())

    def forget(self, session_id: str) -> None:
        for sessions in self._legacy.values():
            sessions.pop(session_id, None)

    async def publish(self, virtual_server: str, kinds: frozenset[str]) -> None:
        bus = self._buses.get(virtual_server)
        for kind in sorted(kinds):
            if bus is not None:
                await bus.publish(EVENTS[kind])
        sessions = self._legacy.get(virtual_server, {})
        cutoff = time.monotonic() - self.session_idle_timeout
        for session_id, (session, seen) in list(sessions.items()):
            if seen < cutoff:
                sessions.pop(session_id, None)
                continue
            with anyio.move_on_after(SEND_TIMEOUT):
                for kind in sorted(kinds):
                    if kind == "tools":
                        await session.send_tool_list_changed()
                    elif kind == "resources":
                        await session.send_resource_list_changed()
                    elif kind == "prompts":
                        await session.send_prompt_list_changed()

    def close(self, virtual_server: str) -> None:
        """The virtual server is gone: end its listen streams gracefully, drop its sessions."""
        handler = self._handlers.pop(virtual_server, None)
        self._buses.pop(virtual_server, None)
        if handler is not None:
            handler.close()
        self._legacy.pop(virtual_server, None)

    def close_all(self) -> None:
        for name in list(self._handlers):
            self.close(name)


class SessionTracker:
    """Server middleware: remember which legacy session belongs to which virtual server."""

    def __init__(self, broadcaster: Broadcaster) -> None:
        self.broadcaster = broadcaster

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        request = ctx.request
        if request is not None and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            session_id = request.headers.get("mcp-session-id")
            if session_id:
                name = request_info(ctx).virtual_server["name"]
                self.broadcaster.track(name, session_id, ctx.session)
        return await call_next(ctx)
