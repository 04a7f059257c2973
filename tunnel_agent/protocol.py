"""The tunnel wire protocol: one WebSocket carries many independent byte streams.

Imported by both ends (the gateway's hub and the on-prem agent), so it depends on the
standard library only. Every WebSocket *binary* message is exactly one frame; a text
message is a protocol violation. A frame is a fixed 5-byte header and a payload::

    offset 0        1                    5
           +--------+--------------------+------------------------+
           | type   | stream id          | payload ...            |
           | uint8  | uint32, big endian | (length = rest of msg) |
           +--------+--------------------+------------------------+

The WebSocket already delimits messages, so there is no length field to get wrong, and
a fixed binary header keeps parsing trivial (no JSON parser ever sees untrusted framing).

Frame types (``FrameType``):

``OPEN``   stream id != 0. Payload: the target, UTF-8, 1..255 bytes (the subdomain of the
           tunnel's domain, e.g. ``crm``). Only the gateway opens streams (even ids); the
           agent would use odd ids. Each side starts with ``INITIAL_WINDOW`` bytes of credit
           for the other, in both directions.
``DATA``   1..``MAX_DATA`` bytes of stream payload. Counts against the sender's credit: a
           receiver that is sent more than it granted resets the stream.
``CLOSE``  empty. The sender's half of the stream ends (like a TCP FIN); the other half stays
           open. A stream is finished when both halves are closed.
``ERROR``  uint16 ``ErrorCode`` + UTF-8 message (at most 512 bytes). Aborts the stream in both
           directions; no further frames for that id are meaningful (late ones are ignored).
``CREDIT`` uint32 increment (> 0): the receiver of this frame may send that many more bytes
           on the stream. Per-stream credit means one stalled consumer stops only its own
           stream; the link's reader never blocks on an application.
``PING``   stream id 0, 8-byte opaque nonce. The peer answers at once with ``PONG``.
``PONG``   stream id 0, the nonce of the ``PING`` it answers. A side that sees no ``PONG``
           within its deadline declares the link dead and closes it.

Authentication happens before the first frame, in the WebSocket handshake
(``Authorization: Bearer <tunnel token>``), so frames carry no credentials at all.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

PROTOCOL_VERSION = "1"
"""Sent by the agent in the ``Tether-Tunnel-Protocol`` handshake header."""

CONNECT_PATH = "/v1/tunnels/connect"

HEADER = struct.Struct("!BI")
HEADER_SIZE = HEADER.size
MAX_DATA = 64 * 1024
"""Largest DATA payload: keeps frames small so streams interleave fairly on the link."""
MAX_FRAME = HEADER_SIZE + MAX_DATA
INITIAL_WINDOW = 256 * 1024
"""Credit each side grants the other per stream when it opens."""
MAX_WINDOW = 2**31 - 1
MAX_TARGET = 255
MAX_ERROR_MESSAGE = 512
MAX_STREAM_ID = 2**32 - 1
NONCE_SIZE = 8

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class FrameType(enum.IntEnum):
    OPEN = 1
    DATA = 2
    CLOSE = 3
    ERROR = 4
    CREDIT = 5
    PING = 6
    PONG = 7


class ErrorCode(enum.IntEnum):
    """Why a stream was aborted; carried in ``ERROR`` frames and counted by both ends."""

    PROTOCOL = 1
    """The peer broke the rules (bad frame, credit exceeded, malformed HTTP head)."""
    REFUSED = 2
    """The agent will not serve this target (unknown route, or not in its allow-list)."""
    UNREACHABLE = 3
    """The target is allowed but could not be reached on-prem."""
    CANCELLED = 4
    """The side that sent it no longer wants the stream."""
    LINK_LOST = 5
    """Local only, never sent: the WebSocket under the stream went away."""
    INTERNAL = 6
    """An unexpected failure in the sender."""
    OVERLOADED = 7
    """Too many concurrent streams on this link."""


class ProtocolError(Exception):
    """A frame that cannot be decoded; the link that carried it is closed."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: FrameType
    stream_id: int
    payload: bytes = b""

    # Typed views of the payload, for the frame types that carry structure.
    @property
    def target(self) -> str:
        return self.payload.decode()

    @property
    def credit(self) -> int:
        (increment,) = _U32.unpack(self.payload)
        return int(increment)

    @property
    def error(self) -> tuple[ErrorCode, str]:
        (code,) = _U16.unpack_from(self.payload)
        try:
            known = ErrorCode(code)
        except ValueError:
            known = ErrorCode.INTERNAL
        return known, self.payload[2:].decode(errors="replace")


def encode(frame: Frame) -> bytes:
    return HEADER.pack(frame.type, frame.stream_id) + frame.payload


def open_frame(stream_id: int, target: str) -> Frame:
    return Frame(FrameType.OPEN, stream_id, target.encode())


def data_frame(stream_id: int, data: bytes) -> Frame:
    return Frame(FrameType.DATA, stream_id, data)


def close_frame(stream_id: int) -> Frame:
    return Frame(FrameType.CLOSE, stream_id)


def error_frame(stream_id: int, code: ErrorCode, message: str) -> Frame:
    text = message.encode()[:MAX_ERROR_MESSAGE].decode(errors="ignore")
    return Frame(FrameType.ERROR, stream_id, _U16.pack(code) + text.encode())


def credit_frame(stream_id: int, increment: int) -> Frame:
    return Frame(FrameType.CREDIT, stream_id, _U32.pack(increment))


def ping_frame(nonce: bytes) -> Frame:
    return Frame(FrameType.PING, 0, nonce)


def pong_frame(nonce: bytes) -> Frame:
    return Frame(FrameType.PONG, 0, nonce)


def decode(message: bytes) -> Frame:
    """Parse and validate one frame; ``ProtocolError`` names what is wrong."""
    if len(message) < HEADER_SIZE:
        raise ProtocolError(f"frame of {len(message)} bytes is shorter than the {HEADER_SIZE}-byte header")
    if len(message) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(message)} bytes exceeds {MAX_FRAME}")
    type_code, stream_id = HEADER.unpack_from(message)
    try:
        kind = FrameType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown frame type {type_code}") from None
    payload = bytes(message[HEADER_SIZE:])
    _check(kind, stream_id, payload)
    return Frame(kind, stream_id, payload)


def _check(kind: FrameType, stream_id: int, payload: bytes) -> None:
    if kind in (FrameType.PING, FrameType.PONG):
        if stream_id != 0:
            raise ProtocolError(f"{kind.name} must use stream 0")
        if len(payload) != NONCE_SIZE:
            raise ProtocolError(f"{kind.name} nonce must be {NONCE_SIZE} bytes")
        return
    if stream_id == 0:
        raise ProtocolError(f"{kind.name} needs a stream id")
    if kind is FrameType.OPEN:
        if not 1 <= len(payload) <= MAX_TARGET:
            raise ProtocolError(f"OPEN target must be 1..{MAX_TARGET} bytes")
        _utf8(payload, "OPEN target")
    elif kind is FrameType.DATA:
        if not payload:
            raise ProtocolError("empty DATA frame")
    elif kind is FrameType.CLOSE:
        if payload:
            raise ProtocolError("CLOSE carries no payload")
    elif kind is FrameType.ERROR:
        if not 2 <= len(payload) <= 2 + MAX_ERROR_MESSAGE:
            raise ProtocolError("ERROR payload must be a code and at most 512 bytes of message")
        _utf8(payload[2:], "ERROR message")
    elif kind is FrameType.CREDIT:
        if len(payload) != 4:
            raise ProtocolError("CREDIT payload must be 4 bytes")
        (increment,) = _U32.unpack(payload)
        if increment == 0:
            raise ProtocolError("CREDIT increment must be positive")


def _utf8(raw: bytes, what: str) -> None:
    try:
        raw.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None
