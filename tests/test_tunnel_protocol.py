"""The tunnel frame codec: every frame round-trips, and malformed input is refused by name."""

from __future__ import annotations

import json
import struct

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from tunnel_agent import httpwire, protocol
from tunnel_agent.httpwire import HeadError, RequestHead, ResponseHead
from tunnel_agent.protocol import ErrorCode, Frame, FrameType, ProtocolError


@pytest.mark.parametrize(
    "frame",
    [
        protocol.open_frame(2, "crm"),
        protocol.data_frame(7, b"\x00\x01payload"),
        protocol.close_frame(4),
        protocol.error_frame(6, ErrorCode.REFUSED, "not in the allow-list"),
        protocol.credit_frame(8, 131072),
        protocol.ping_frame(b"12345678"),
        protocol.pong_frame(b"abcdefgh"),
    ],
)
def test_every_frame_type_round_trips(frame: Frame) -> None:
    assert protocol.decode(protocol.encode(frame)) == frame


def test_header_is_one_type_byte_and_a_big_endian_stream_id() -> None:
    assert protocol.encode(protocol.data_frame(258, b"x")) == b"\x02\x00\x00\x01\x02x"


def test_typed_views_read_the_payload() -> None:
    assert protocol.decode(protocol.encode(protocol.open_frame(2, "crm.eu"))).target == "crm.eu"
    assert protocol.decode(protocol.encode(protocol.credit_frame(2, 99))).credit == 99
    error = protocol.decode(protocol.encode(protocol.error_frame(2, ErrorCode.UNREACHABLE, "down")))
    assert error.error == (ErrorCode.UNREACHABLE, "down")


def test_unknown_error_codes_read_as_internal() -> None:
    frame = Frame(FrameType.ERROR, 2, struct.pack("!H", 999) + b"?")
    assert protocol.decode(protocol.encode(frame)).error == (ErrorCode.INTERNAL, "?")


def test_error_messages_are_truncated_to_the_limit() -> None:
    frame = protocol.error_frame(2, ErrorCode.INTERNAL, "é" * 1000)
    assert len(frame.payload) <= 2 + protocol.MAX_ERROR_MESSAGE
    protocol.decode(protocol.encode(frame))


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\x02\x00\x00", "shorter than"),
        (b"\x63\x00\x00\x00\x01", "unknown frame type"),
        (b"\x02\x00\x00\x00\x00x", "needs a stream id"),
        (b"\x06\x00\x00\x00\x01" + b"12345678", "must use stream 0"),
        (b"\x06\x00\x00\x00\x00" + b"1234", "nonce"),
        (b"\x01\x00\x00\x00\x02", "OPEN target"),
        (b"\x01\x00\x00\x00\x02" + b"x" * 256, "OPEN target"),
        (b"\x01\x00\x00\x00\x02\xff", "not UTF-8"),
        (b"\x02\x00\x00\x00\x02", "empty DATA"),
        (b"\x03\x00\x00\x00\x02x", "no payload"),
        (b"\x04\x00\x00\x00\x02\x00", "ERROR payload"),
        (b"\x05\x00\x00\x00\x02\x00\x00\x00\x00", "positive"),
        (b"\x05\x00\x00\x00\x02\x00\x01", "4 bytes"),
        (b"\x02\x00\x00\x00\x02" + b"x" * (protocol.MAX_DATA + 1), "exceeds"),
    ],
)
def test_malformed_frames_are_refused(raw: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode(raw)


def test_largest_data_frame_is_accepted() -> None:
    frame = protocol.data_frame(2, b"x" * protocol.MAX_DATA)
    assert protocol.decode(protocol.encode(frame)) == frame


async def _read_head(raw: bytes, reader: str = "request") -> object:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    await send.send(raw)
    await send.aclose()
    buffered = BufferedByteReceiveStream(receive)  # type: ignore[arg-type]
    if reader == "request":
        return await httpwire.read_request(buffered)
    return await httpwire.read_response(buffered)


def _framed(document: object) -> bytes:
    raw = json.dumps(document).encode()
    return struct.pack("!I", len(raw)) + raw


@pytest.mark.anyio
async def test_http_heads_round_trip() -> None:
    request = RequestHead("POST", "/mcp?a=1", [("content-type", "application/json")], True)
    response = ResponseHead(200, [("content-type", "text/event-stream")])
    assert await _read_head(httpwire.encode_request(request)) == request
    assert await _read_head(httpwire.encode_response(response), "response") == response


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"method": "get", "target": "/", "headers": [], "has_body": False}, "method"),
        ({"method": "GET", "target": "http://evil/", "headers": [], "has_body": False}, "origin-form"),
        ({"method": "GET", "target": "//evil/x", "headers": [], "has_body": False}, "origin-form"),
        ({"method": "GET", "target": "/a b", "headers": [], "has_body": False}, "origin-form"),
        ({"method": "GET", "target": "/", "headers": [["x", "a\r\nb"]], "has_body": False}, "malformed"),
        ({"method": "GET", "target": "/", "headers": [["bad name", "v"]], "has_body": False}, "malformed"),
        ({"method": "GET", "target": "/", "headers": [], "has_body": "yes"}, "has_body"),
        ([], "JSON object"),
    ],
)
async def test_malformed_request_heads_are_refused(document: object, problem: str) -> None:
    raw = _framed(document)
    with pytest.raises(HeadError, match=problem):
        await _read_head(raw)


@pytest.mark.anyio
async def test_heads_are_bounded_and_must_be_complete() -> None:
    with pytest.raises(HeadError, match="exceeds"):
        await _read_head(struct.pack("!I", httpwire.MAX_HEAD + 1))
    with pytest.raises(HeadError, match="ended before"):
        await _read_head(struct.pack("!I", 50) + b"{}")


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    headers = [
        ("Connection", "keep-alive, X-Private-Hop"),
        ("X-Private-Hop", "1"),
        ("Transfer-Encoding", "chunked"),
        ("Host", "crm.example"),
        ("Authorization", "Bearer t"),
    ]
    assert httpwire.end_to_end(headers) == [("authorization", "Bearer t")]
