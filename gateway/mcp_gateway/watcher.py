"""Following an upstream's ``list_changed`` notifications, in either protocol era.

2026-07-28 servers deliver change notifications only on a ``subscriptions/listen``
stream; 2025-era servers send them on the session (the GET stream over HTTP, or stdout
for stdio), where a message handler sees them. Either way the upstream pool learns which
lists changed (``tools``, ``resources``, ``prompts``) and the catalog and connected
clients follow.

``HttpWatcher`` keeps one background connection per HTTP upstream and reconnects with
backoff. A reconnect after a drop reports every list as changed, because notifications
sent while disconnected are lost (listen streams have no replay).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio
import anyio.lowlevel
import mcp.types as mcp_types
from mcp import Client, MCPError
from mcp.client.session import IncomingMessage, MessageHandlerFnT
from mcp.shared.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from gateway.mcp_gateway.backoff import Backoff
from gateway.mcp_gateway.errors import describe

log = logging.getLogger("tether.mcp_gateway")

ALL_LISTS = frozenset({"tools", "resources", "prompts"})
OnChange = Callable[[frozenset[str]], Awaitable[None]]
MessageHandler = MessageHandlerFnT
KEEPALIVE_SECONDS = 30.0


def legacy_handler(on_change: OnChange) -> MessageHandler:
    """A ``message_handler`` turning 2025-era list_changed notifications into ``on_change``."""

    async def handle(message: IncomingMessage) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            await on_change(frozenset({"tools"}))
        elif isinstance(message, mcp_types.ResourceListChangedNotification):
            await on_change(frozenset({"resources"}))
        elif isinstance(message, mcp_types.PromptListChangedNotification):
            await on_change(frozenset({"prompts"}))
        else:
            await anyio.lowlevel.checkpoint()

    return handle


def is_modern(client: Client) -> bool:
    return client.protocol_version in MODERN_PROTOCOL_VERSIONS


async def follow(client: Client, on_change: OnChange) -> None:
    """Relay a 2026-07-28 client's listen events until the stream ends (raises if it drops).

    A server without ``subscriptions/listen`` simply never notifies: wait forever then.
    """
    try:
        async with client.listen(
            tools_list_changed=True, prompts_list_changed=True, resources_list_changed=True
        ) as subscription:
            async for event in subscription:
                if isinstance(event, ToolsListChanged):
                    await on_change(frozenset({"tools"}))
                elif isinstance(event, ResourcesListChanged):
                    await on_change(frozenset({"resources"}))
                elif isinstance(event, PromptsListChanged):
                    await on_change(frozenset({"prompts"}))
    except MCPError as exc:
        if exc.code != mcp_types.METHOD_NOT_FOUND:
            raise
        log.info("upstream does not serve subscriptions/listen; no push list_changed from it")
        await anyio.sleep_forever()


async def keepalive(client: Client) -> None:
    """For a 2025-era session: ping until it fails, so a dead link is noticed and redialled."""
    while True:
        await anyio.sleep(KEEPALIVE_SECONDS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.send_ping()


class HttpWatcher:
    """One background connection to an HTTP upstream, for its change notifications."""

    def __init__(
        self,
        name: str,
        connect: Callable[[MessageHandler], AbstractAsyncContextManager[Client]],
        on_change: OnChange,
        on_connected: Callable[[], None],
    ) -> None:
        self.name = name
        self._connect = connect
        self._on_change = on_change
        self._on_connected = on_connected
        self.connected = False
        self.last_error: str | None = None

    async def run(self) -> None:
        backoff = Backoff(initial=0.2, maximum=15.0)
        dropped = False
        while True:
            try:
                async with self._connect(legacy_handler(self._on_change)) as client:
                    self.connected, self.last_error = True, None
                    backoff.started()
                    self._on_connected()
                    if dropped:
                        await self._on_change(ALL_LISTS)
                    if is_modern(client):
                        await follow(client, self._on_change)
                    else:
                        await keepalive(client)
            except Exception as exc:
                self.last_error = describe(exc)
                log.debug("watcher for %s: %s", self.name, self.last_error)
            finally:
                if self.connected:
                    dropped = True
                self.connected = False
            await anyio.sleep(backoff.next_delay())

    def snapshot(self) -> dict[str, Any]:
        return {"connected": self.connected, "last_error": self.last_error}
