"""The MCP gateway tests' upstream, made resumable: its SSE events carry ids.

With an event store the server primes every SSE response with an event id, so a client
whose response stream breaks tries to resume it (GET with ``Last-Event-ID``), as clients
of servers like ``@modelcontextprotocol/server-everything`` do. The tunnel's agent-loss
tests need that behaviour: resumption attempts are what once made a call wait the hub's
connect wait over and over after its agent died.

Run: ``python -m tests.support.resumable_mcp --port 0``.
"""

from __future__ import annotations

import argparse
import itertools

from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import JSONRPCMessage

from gateway.serving import serve
from tests.support.mcp_gateway_upstream import build


class MemoryEventStore(EventStore):
    """Every event kept in memory, in order (a test server lives for one module)."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        found = [i for i, (event_id, _, _) in enumerate(self._events) if event_id == last_event_id]
        if not found:
            return None
        stream_id = self._events[found[0]][1]
        for event_id, stream, message in self._events[found[0] + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--label", default="onprem")
    args = parser.parse_args()
    app = build(args.label).streamable_http_app(
        streamable_http_path="/mcp",
        event_store=MemoryEventStore(),
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=args.host,
    )
    serve(app, args.host, args.port)


if __name__ == "__main__":
    main()
