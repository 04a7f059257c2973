"""Keep N outbound tunnel connections up: dial, authenticate, serve, back off, redial.

The agent only ever dials out (the gateway never connects in), so it works from behind
NAT and firewalls that allow outbound HTTPS. Each slot is an independent loop with its own
backoff; the gateway spreads streams over every live slot, so losing one connection
leaves the others serving while it reconnects. Slot identity (agent id + slot number) is
sent with each dial so the gateway replaces a stale registration instead of keeping a
half-dead duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import anyio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from tunnel_agent.backoff import Backoff
from tunnel_agent.link import WebSocketsLink
from tunnel_agent.metrics import AgentMetrics
from tunnel_agent.mux import Mux, MuxSettings, Role, StreamHandler
from tunnel_agent.protocol import CONNECT_PATH, MAX_FRAME, PROTOCOL_VERSION

log = logging.getLogger("tether.tunnel.agent")

REJECTED_CODES = {4401: "token refused (unknown or rotated)", 4403: "tunnel archived"}


@dataclass(frozen=True)
class ConnectorSettings:
    url: str
    """``ws(s)://gateway/v1/tunnels/connect`` (see ``connect_url``)."""
    token: Callable[[], str] = field(repr=False)
    """Read before every dial, so a token file can be replaced without a restart."""
    agent_id: str
    connections: int = 2
    mux: MuxSettings = field(default_factory=MuxSettings)
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    stable_after: float = 30.0
    open_timeout: float = 10.0


def connect_url(gateway: str) -> str:
    """``http://host:port`` -> ``ws://host:port/v1/tunnels/connect`` (https -> wss)."""
    parts = urlsplit(gateway)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"--gateway must be an http(s):// or ws(s):// URL, not {gateway!r}")
    path = parts.path if parts.path not in ("", "/") else CONNECT_PATH
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def api_url(gateway: str) -> str:
    """The REST API base for the same ``--gateway`` (ws -> http, wss -> https, no path)."""
    parts = urlsplit(gateway)
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"--gateway must be an http(s):// or ws(s):// URL, not {gateway!r}")
    return urlunsplit((scheme, parts.netloc, "", "", ""))


class Connector:
    def __init__(self, settings: ConnectorSettings, handler: StreamHandler, metrics: AgentMetrics) -> None:
        self.settings = settings
        self.handler = handler
        self.metrics = metrics
        self._muxes: set[Mux] = set()
        self._scope: anyio.CancelScope | None = None
        self._closing = False

    async def run(self) -> None:
        async with anyio.create_task_group() as tasks:
            self._scope = tasks.cancel_scope
            for slot in range(self.settings.connections):
                tasks.start_soon(self._keep_connected, slot, name=f"tunnel slot {slot}")

    async def close(self, reason: str = "agent shutting down") -> None:
        """Stop redialling and close every link with 1001, so the gateway stops routing to
        this agent at once instead of at its next ping deadline."""
        self._closing = True
        async with anyio.create_task_group() as tasks:
            for mux in list(self._muxes):
                tasks.start_soon(mux.aclose, 1001, reason)
        if self._scope is not None:
            self._scope.cancel()

    async def _keep_connected(self, slot: int) -> None:
        settings = self.settings
        backoff = Backoff(settings.backoff_base, settings.backoff_cap, settings.stable_after)
        while not self._closing:
            connected_for = await self._connect_once(slot)
            if self._closing:
                return
            delay = backoff.next_delay(connected_for)
            log.info("slot %d: reconnecting in %.2fs", slot, delay)
            await anyio.sleep(delay)

    async def _connect_once(self, slot: int) -> float | None:
        """One dial and, if it succeeds, one served link; returns how long the link lived."""
        settings = self.settings
        headers = {
            "Authorization": f"Bearer {settings.token()}",
            "Tether-Tunnel-Protocol": PROTOCOL_VERSION,
            "Tether-Agent-Id": settings.agent_id,
            "Tether-Agent-Slot": str(slot),
        }
        try:
            async with connect(
                settings.url,
                additional_headers=headers,
                open_timeout=settings.open_timeout,
                ping_interval=None,  # the mux pings with its own deadline
                max_size=MAX_FRAME,
                compression=None,
                proxy=None,
            ) as websocket:
                mux = Mux(
                    WebSocketsLink(websocket),
                    Role.AGENT,
                    accept=self.handler,
                    settings=settings.mux,
                    name=f"slot {slot}",
                )
                started = anyio.current_time()
                self._muxes.add(mux)
                self.metrics.connects.inc()
                self.metrics.connections.set(1, slot=str(slot))
                log.info("slot %d: connected to %s", slot, settings.url)
                try:
                    async with anyio.create_task_group() as tasks:
                        tasks.start_soon(self._report_rtt, slot, mux)
                        await mux.run()
                        tasks.cancel_scope.cancel()
                finally:
                    self._muxes.discard(mux)
                    self.metrics.connections.set(0, slot=str(slot))
                    self.metrics.rtt.set(0, slot=str(slot))
                lived = anyio.current_time() - started
                self._log_end(slot, mux.close_code, mux.close_reason or "closed")
                return lived
        except InvalidStatus as exc:
            self.metrics.disconnects.inc(reason="handshake")
            log.error("slot %d: gateway refused the handshake: HTTP %d", slot, exc.response.status_code)
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            self.metrics.disconnects.inc(reason="dial")
            log.warning("slot %d: cannot reach %s: %s", slot, settings.url, exc or type(exc).__name__)
        return None

    def _log_end(self, slot: int, code: int | None, reason: str) -> None:
        if code in REJECTED_CODES:
            self.metrics.rejected.inc(code=str(code))
            self.metrics.disconnects.inc(reason="rejected")
            log.error("slot %d: %s (close %d: %s)", slot, REJECTED_CODES[code], code, reason)
        else:
            self.metrics.disconnects.inc(reason="lost")
            log.warning("slot %d: link closed (code %s): %s", slot, code, reason)

    async def _report_rtt(self, slot: int, mux: Mux) -> None:
        while True:
            await anyio.sleep(max(mux.settings.ping_interval, 0.5))
            if mux.counters.last_rtt is not None:
                self.metrics.rtt.set(mux.counters.last_rtt, slot=str(slot))
