"""The registry of connected tunnel agents: who is connected, and which link carries a stream.

An agent's connection is identified by (tunnel, agent id, slot). A reconnect with the same
identity replaces the stale registration at once (closing it with 4409) instead of
waiting for the old link's ping deadline; different identities coexist, which is how one
agent keeps two connections and how two agent replicas share a tunnel. Each new stream
goes to the live connection with the fewest active streams.

Close codes sent to agents: 4400 bad handshake, 4401 unknown or rotated token, 4403 tunnel
archived, 4408 ping deadline missed, 4409 replaced by a newer registration, 4429 too many
connections, 1001 gateway shutting down.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2

from gateway.observability import metrics
from gateway.resources import tunnel_certificates, tunnels
from gateway.store.base import Store
from gateway.tunnels import addressing
from gateway.tunnels.errors import TunnelUnavailable
from gateway.tunnels.tokens import PlainSealer, Sealer
from gateway.tunnels.transport import TunnelTransport
from tunnel_agent.link import Link, LinkClosed
from tunnel_agent.mux import Mux, MuxSettings, MuxStream, Role
from tunnel_agent.protocol import PROTOCOL_VERSION, ErrorCode

log = logging.getLogger("tether.tunnels")

CLOSE_BAD_HANDSHAKE = 4400
CLOSE_TOKEN_REFUSED = 4401
CLOSE_ARCHIVED = 4403
CLOSE_REPLACED = 4409
CLOSE_TOO_MANY = 4429
CLOSE_SHUTDOWN = 1001

_AGENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class HubSettings:
    base_domain: str = addressing.DEFAULT_BASE_DOMAIN
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    stream_ping_interval: float = 0.5
    stream_ping_timeout: float = 1.0
    """Pinging while a connection carries streams: calls in flight on an agent that froze
    or vanished without closing its TCP connection fail within ~1.5 s, not ~10 s."""
    connect_wait: float = 5.0
    """How long a *new* request waits for an agent of its tunnel to (re)connect before
    failing (resuming a stream whose connection was lost never waits: see the transport)."""
    max_connections_per_tunnel: int = 16


@dataclass(frozen=True)
class Handshake:
    """What the agent's WebSocket handshake carried (the token is never logged)."""

    token: str | None = field(repr=False)
    agent_id: str | None
    slot: str | None
    protocol: str | None
    peer: str


@dataclass
class AgentConnection:
    tunnel_id: str
    domain: str
    agent_id: str
    slot: int
    token_id: str
    peer: str
    mux: Mux
    connected_at: float
    picks: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.agent_id, self.slot)


@dataclass
class HubCounters:
    connects_total: int = 0
    disconnects_total: int = 0
    rejected_total: dict[str, int] = field(default_factory=dict)
    replaced_total: int = 0
    dropped_total: int = 0
    streams_total: int = 0
    stream_errors_total: dict[str, int] = field(default_factory=dict)
    no_agent_total: int = 0


class _Rejected(Exception):
    def __init__(self, code: int, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.counter = counter


class TunnelHub:
    def __init__(
        self, store: Store, sealer: Sealer | None = None, settings: HubSettings | None = None
    ) -> None:
        self.store = store
        self.sealer: Sealer = sealer or PlainSealer()
        self.settings = settings or HubSettings()
        self.base_domain = addressing.check_base_domain(self.settings.base_domain)
        self.counters = HubCounters()
        self._connections: dict[str, dict[tuple[str, int], AgentConnection]] = {}
        """tunnel id -> (agent id, slot) -> connection."""
        self._tunnel_of_domain: dict[str, str] = {}
        self._changed = anyio.Event()
        self._closing = False

    # Agents connecting ------------------------------------------------------------------

    async def serve(self, link: Link, handshake: Handshake) -> None:
        """Authenticate, register, and serve one agent connection until it ends."""
        try:
            agent_id, slot = self._check_handshake(handshake)
            credential = await self._authenticate(handshake.token or "")
            tunnel_id = credential.tunnel["id"]
            if len(self._live(tunnel_id)) >= self.settings.max_connections_per_tunnel:
                raise _Rejected(CLOSE_TOO_MANY, "too many connections for this tunnel", "capacity")
        except _Rejected as exc:
            self._count(self.counters.rejected_total, exc.counter)
            log.warning("tunnel connection from %s refused: %s", handshake.peer, exc.reason)
            await link.close(exc.code, exc.reason)
            return
        mux = Mux(
            link,
            Role.GATEWAY,
            settings=MuxSettings(
                self.settings.ping_interval,
                self.settings.ping_timeout,
                busy_ping_interval=self.settings.stream_ping_interval,
                busy_ping_timeout=self.settings.stream_ping_timeout,
            ),
            name=f"tunnel {tunnel_id} {agent_id}/{slot}",
        )
        connection = AgentConnection(
            tunnel_id,
            credential.tunnel["domain"],
            agent_id,
            slot,
            credential.token_id,
            handshake.peer,
            mux,
            anyio.current_time(),
        )
        await self._register(connection)
        try:
            # A rotation may have committed between authentication and registration.
            if await tunnels.current_token_id(self.store, tunnel_id) != credential.token_id:
                await mux.aclose(CLOSE_TOKEN_REFUSED, "tunnel token rotated")
                return
            await mux.run()
        finally:
            self._unregister(connection)

    def _check_handshake(self, handshake: Handshake) -> tuple[str, int]:
        if handshake.protocol != PROTOCOL_VERSION:
            raise _Rejected(
                CLOSE_BAD_HANDSHAKE, f"unsupported tunnel protocol {handshake.protocol!r}", "handshake"
            )
        if not handshake.token:
            raise _Rejected(CLOSE_TOKEN_REFUSED, "missing tunnel token", "token")
        agent_id = handshake.agent_id or "anonymous-" + secrets.token_hex(6)
        if not _AGENT_ID.match(agent_id):
            raise _Rejected(CLOSE_BAD_HANDSHAKE, "agent id must be 1-64 of [A-Za-z0-9._-]", "handshake")
        slot_text = handshake.slot or "0"
        if not slot_text.isdigit() or int(slot_text) > 255:
            raise _Rejected(CLOSE_BAD_HANDSHAKE, "slot must be an integer 0-255", "handshake")
        return agent_id, int(slot_text)

    async def _authenticate(self, token: str) -> tunnels.Credential:
        try:
            return await tunnels.authenticate(self.store, token)
        except tunnels.TokenRefused as exc:
            if exc.archived:
                raise _Rejected(CLOSE_ARCHIVED, str(exc), "archived") from None
            raise _Rejected(CLOSE_TOKEN_REFUSED, str(exc), "token") from None

    async def _register(self, connection: AgentConnection) -> None:
        slots = self._connections.setdefault(connection.tunnel_id, {})
        stale = slots.get(connection.key)
        slots[connection.key] = connection
        self._tunnel_of_domain[connection.domain] = connection.tunnel_id
        self.counters.connects_total += 1
        log.info(
            "tunnel %s: agent %s slot %d connected from %s (%d live)",
            connection.tunnel_id,
            connection.agent_id,
            connection.slot,
            connection.peer,
            len(self._live(connection.tunnel_id)),
        )
        self._notify()
        if stale is not None:
            self.counters.replaced_total += 1
            log.info(
                "tunnel %s: agent %s slot %d re-registered; closing its previous connection",
                connection.tunnel_id,
                connection.agent_id,
                connection.slot,
            )
            await stale.mux.aclose(CLOSE_REPLACED, "replaced by a newer connection from the same agent")

    def _unregister(self, connection: AgentConnection) -> None:
        slots = self._connections.get(connection.tunnel_id, {})
        if slots.get(connection.key) is connection:
            del slots[connection.key]
        if not slots:
            self._connections.pop(connection.tunnel_id, None)
        self.counters.disconnects_total += 1
        log.info(
            "tunnel %s: agent %s slot %d disconnected after %.1fs (code %s: %s)",
            connection.tunnel_id,
            connection.agent_id,
            connection.slot,
            anyio.current_time() - connection.connected_at,
            connection.mux.close_code,
            connection.mux.close_reason,
        )
        self._notify()

    # Dropping agents (token rotation, archive, shutdown) --------------------------------

    async def drop_stale(self, tunnel_id: str, current_token_id: str | None, code: int, reason: str) -> int:
        """Close this tunnel's connections not made with ``current_token_id`` (None: all)."""
        stale = [c for c in self._live(tunnel_id) if c.token_id != current_token_id]
        async with anyio.create_task_group() as tasks:
            for connection in stale:
                tasks.start_soon(connection.mux.aclose, code, reason)
        self.counters.dropped_total += len(stale)
        if stale:
            log.info("tunnel %s: dropped %d connection(s): %s", tunnel_id, len(stale), reason)
        return len(stale)

    async def close(self) -> None:
        self._closing = True
        async with anyio.create_task_group() as tasks:
            for slots in list(self._connections.values()):
                for connection in list(slots.values()):
                    tasks.start_soon(connection.mux.aclose, CLOSE_SHUTDOWN, "gateway shutting down")

    # Streams ----------------------------------------------------------------------------

    def handles(self, host: str) -> bool:
        """True for every host under the base domain: such hosts never fall through to DNS."""
        return addressing.is_tunnel_host(host, self.base_domain)

    def transport_for(self, url: str | httpx2.URL) -> httpx2.AsyncBaseTransport | None:
        """The transport for an MCP server URL: a tunnel transport when the host is under the
        base domain (even if no agent is connected yet: such a host must never be resolved
        by public DNS), None for every other URL (use the default transport)."""
        host = httpx2.URL(str(url)).host
        return TunnelTransport(self, self.trusted_certificates) if self.handles(host) else None

    async def trusted_certificates(self, tunnel_id: str) -> list[str]:
        """The tunnel's CA certificates (PEM) that TLS through it must chain to, read per stream
        so that an archive takes effect for the next connection, on every gateway replica."""
        return await tunnel_certificates.trusted_pems(self.store, tunnel_id)

    async def open_stream(self, host: str, wait: bool = True) -> tuple[MuxStream, AgentConnection]:
        """A stream to ``host``'s subdomain through a live connection of its tunnel.

        Waits up to ``connect_wait`` for an agent to (re)connect (not at all when ``wait``
        is false); ``TunnelUnavailable`` if the host names no tunnel, the tunnel is
        archived, or no agent comes.
        """
        try:
            address = addressing.split_host(host, self.base_domain)
        except addressing.NotATunnelHost as exc:
            raise TunnelUnavailable(str(exc)) from None
        deadline = anyio.current_time() + (self.settings.connect_wait if wait else 0.0)
        checked = False
        while True:
            changed = self._changed
            connection = self._pick(address.domain)
            if connection is not None:
                try:
                    stream = connection.mux.open(address.subdomain)
                except LinkClosed:
                    continue
                self.counters.streams_total += 1
                return stream, connection
            if not checked:
                checked = True
                tunnel = await tunnels.find_by_domain(self.store, address.domain)
                if tunnel is None:
                    raise TunnelUnavailable(f"no tunnel has the domain {address.domain}")
                if tunnel.get("archived_at"):
                    raise TunnelUnavailable(f"tunnel {tunnel['id']} is archived")
                continue
            remaining = deadline - anyio.current_time()
            if remaining <= 0 or self._closing:
                self.counters.no_agent_total += 1
                raise TunnelUnavailable(f"no tunnel agent is connected for {address.domain}")
            with anyio.move_on_after(remaining):
                await changed.wait()

    def _pick(self, domain: str) -> AgentConnection | None:
        tunnel_id = self._tunnel_of_domain.get(domain)
        live = self._live(tunnel_id) if tunnel_id else []
        if not live:
            return None
        chosen = min(live, key=lambda c: (c.mux.active_streams, c.picks))
        chosen.picks += 1
        return chosen

    def resumable_elsewhere(self, connection: AgentConnection) -> bool:
        """Whether a stream lost with ``connection`` may be resumed through another live
        connection: one of another agent, or the newer registration that replaced it (the
        other connections of an agent that died or froze share its fate)."""
        if connection.mux.close_code == CLOSE_REPLACED:
            return bool(self._live(connection.tunnel_id))
        return any(c.agent_id != connection.agent_id for c in self._live(connection.tunnel_id))

    def record_stream_error(self, connection: AgentConnection, code: ErrorCode, message: str) -> None:
        self._count(self.counters.stream_errors_total, code.name.lower())
        log.warning(
            "tunnel %s: stream via agent %s/%d failed (%s): %s",
            connection.tunnel_id,
            connection.agent_id,
            connection.slot,
            code.name.lower(),
            message[:300],
        )

    # Observation ------------------------------------------------------------------------

    def _live(self, tunnel_id: str) -> list[AgentConnection]:
        return [c for c in self._connections.get(tunnel_id, {}).values() if not c.mux.closed]

    def connections(self, tunnel_id: str) -> list[AgentConnection]:
        """This tunnel's live connections."""
        return self._live(tunnel_id)

    async def wait_for_connections(self, tunnel_id: str, count: int, timeout: float = 10.0) -> None:
        """Return once exactly ``count`` live connections serve the tunnel (tests, readiness)."""
        with anyio.fail_after(timeout):
            while True:
                changed = self._changed
                if len(self._live(tunnel_id)) == count:
                    return
                await changed.wait()

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: totals since start plus what is connected now."""
        live = {tid: self._live(tid) for tid in self._connections}
        counters = self.counters
        return {
            "tunnels_connected": sum(1 for conns in live.values() if conns),
            "connections": sum(len(conns) for conns in live.values()),
            "streams_active": sum(c.mux.active_streams for conns in live.values() for c in conns),
            "connects_total": counters.connects_total,
            "disconnects_total": counters.disconnects_total,
            "rejected_total": dict(counters.rejected_total),
            "replaced_total": counters.replaced_total,
            "dropped_total": counters.dropped_total,
            "streams_total": counters.streams_total,
            "stream_errors_total": dict(counters.stream_errors_total),
            "no_agent_total": counters.no_agent_total,
            "tunnels": {
                tid: {
                    "connections": len(conns),
                    "streams_active": sum(c.mux.active_streams for c in conns),
                    "agents": sorted({c.agent_id for c in conns}),
                }
                for tid, conns in live.items()
                if conns
            },
        }

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        metrics.set_tunnel_connections(sum(len(slots) for slots in self._connections.values()))

    @staticmethod
    def _count(counter: dict[str, int], key: str) -> None:
        counter[key] = counter.get(key, 0) + 1
