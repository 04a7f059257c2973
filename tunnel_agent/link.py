"""The message link a multiplexer runs over, and its adapters.

The mux needs only "send one binary message", "receive one", "close": keeping that a
small protocol lets the same mux run over the agent's ``websockets`` client, the
gateway's Starlette WebSocket (adapter in ``gateway.api.tunnels``) and an in-memory pair
in unit tests, with no test-only branches in the mux itself.
"""

from __future__ import annotations

import math
from typing import Protocol

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tunnel_agent.protocol import ProtocolError


class LinkClosed(Exception):
    """The link is gone; ``code``/``reason`` are the WebSocket close details when known."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason if code is None else f"{reason} (close code {code})")
        self.reason = reason
        self.code = code


class Link(Protocol):
    async def send(self, message: bytes) -> None:
        """Send one binary message; ``LinkClosed`` when the link is gone."""
        ...

    async def receive(self) -> bytes:
        """The next binary message; ``LinkClosed`` at the end, ``ProtocolError`` for text."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the link (idempotent, never raises for an already closed link)."""
        ...


class WebSocketsLink:
    """The agent's side: a ``websockets`` client connection."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    async def send(self, message: bytes) -> None:
        try:
            await self._connection.send(message)
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def receive(self) -> bytes:
        try:
            message = await self._connection.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        if isinstance(message, str):
            raise ProtocolError("text message on a tunnel link")
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._connection.close(code, reason)


def _closed(exc: ConnectionClosed) -> LinkClosed:
    if exc.rcvd is not None:
        return LinkClosed(exc.rcvd.reason or "closed by the gateway", exc.rcvd.code)
    return LinkClosed("connection lost", 1006)


_Message = bytes | LinkClosed


class MemoryLink:
    """One end of an in-memory link (see ``memory_link_pair``)."""

    def __init__(
        self, outgoing: MemoryObjectSendStream[_Message], incoming: MemoryObjectReceiveStream[_Message]
    ) -> None:
        self._outgoing = outgoing
        self._incoming = incoming
        self.closed: LinkClosed | None = None

    async def send(self, message: bytes) -> None:
        if self.closed is not None:
            raise self.closed
        try:
            await self._outgoing.send(message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            raise LinkClosed("peer went away", 1006) from None

    async def receive(self) -> bytes:
        if self.closed is not None:
            raise self.closed
        try:
            message = await self._incoming.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise LinkClosed("peer went away", 1006) from None
        if isinstance(message, LinkClosed):
            self.closed = message
            raise message
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None:
            self.closed = LinkClosed(reason or "closed", code)
            try:
                self._outgoing.send_nowait(LinkClosed(reason or "closed by peer", code))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.WouldBlock):
                pass
        self._outgoing.close()


def memory_link_pair(buffer: float = math.inf) -> tuple[MemoryLink, MemoryLink]:
    """Two connected in-memory links; ``buffer`` bounds unread messages per direction."""
    a_out, b_in = anyio.create_memory_object_stream[_Message](buffer)
    b_out, a_in = anyio.create_memory_object_stream[_Message](buffer)
    return MemoryLink(a_out, a_in), MemoryLink(b_out, b_in)
