"""HTTP over one tunnel stream: a length-prefixed JSON head, then the body until CLOSE.

The gateway writes a request head and the request body, then half-closes; the agent
answers with a response head and the response body, then half-closes. Carrying
requests structurally (not raw HTTP/1.1 bytes) is what lets the agent rewrite the last
hop: it chooses the address it connects to and adds on-prem credentials itself, and no
byte of HTTP parsing is done on untrusted framing. Heads are small JSON objects::

    request:  {"method": "POST", "target": "/mcp?x=1", "headers": [["content-type", "..."]],
               "has_body": true, "trust": ["-----BEGIN CERTIFICATE-----\n..."]}
    response: {"status": 200, "headers": [["content-type", "text/event-stream"]]}

``trust`` (optional, absent when empty) holds the tunnel's CA certificates: when the route's
target is ``https://``, the agent verifies the server against them instead of its default
roots (``tunnel_agent.trust``).

Hop-by-hop headers never cross: each side's HTTP client sets its own framing.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream

MAX_HEAD = 64 * 1024
_LENGTH = struct.Struct("!I")
_METHOD = re.compile(r"^[A-Z]{1,16}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
MAX_TRUST = 8
MAX_TRUST_PEM = 16 * 1024

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)

Headers = list[tuple[str, str]]


class HeadError(Exception):
    """A head that is missing, too large or malformed."""


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    """Origin-form: the path and query, always starting with ``/``."""
    headers: Headers
    has_body: bool
    trust: tuple[str, ...] = ()
    """PEM CA certificates a TLS last hop must chain to; empty: the agent's default trust."""


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Headers


def end_to_end(headers: Iterable[tuple[str, str]]) -> Headers:
    """Lower-cased names, hop-by-hop headers (and those ``Connection`` names) removed."""
    pairs = [(name.lower(), value) for name, value in headers]
    named = {
        token.strip().lower() for name, value in pairs if name == "connection" for token in value.split(",")
    }
    return [(name, value) for name, value in pairs if name not in HOP_BY_HOP and name not in named]


def encode_request(head: RequestHead) -> bytes:
    document: dict[str, Any] = {
        "method": head.method,
        "target": head.target,
        "headers": head.headers,
        "has_body": head.has_body,
    }
    if head.trust:
        document["trust"] = list(head.trust)
    return _frame(document)


def encode_response(head: ResponseHead) -> bytes:
    return _frame({"status": head.status, "headers": head.headers})


def _frame(document: dict[str, Any]) -> bytes:
    raw = json.dumps(document, separators=(",", ":")).encode()
    if len(raw) > MAX_HEAD:
        raise HeadError(f"head of {len(raw)} bytes exceeds {MAX_HEAD}")
    return _LENGTH.pack(len(raw)) + raw


async def read_request(reader: BufferedByteReceiveStream) -> RequestHead:
    document = await _read(reader)
    method, target, has_body = document.get("method"), document.get("target"), document.get("has_body")
    if not isinstance(method, str) or not _METHOD.match(method):
        raise HeadError("request head: bad method")
    if (
        not isinstance(target, str)
        or not target.startswith("/")
        or target.startswith("//")
        or len(target) > 8192
        or not target.isascii()
        or any(ch.isspace() or ord(ch) < 0x21 for ch in target)
    ):
        raise HeadError("request head: target must be an origin-form path")
    if not isinstance(has_body, bool):
        raise HeadError("request head: has_body must be a boolean")
    return RequestHead(method, target, _headers(document), has_body, _trust(document))


async def read_response(reader: BufferedByteReceiveStream) -> ResponseHead:
    document = await _read(reader)
    status = document.get("status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise HeadError("response head: bad status")
    return ResponseHead(status, _headers(document))


async def _read(reader: BufferedByteReceiveStream) -> dict[str, Any]:
    try:
        (length,) = _LENGTH.unpack(await reader.receive_exactly(_LENGTH.size))
        if length > MAX_HEAD:
            raise HeadError(f"head of {length} bytes exceeds {MAX_HEAD}")
        document = json.loads(await reader.receive_exactly(length))
    except (anyio.EndOfStream, anyio.IncompleteRead):
        raise HeadError("stream ended before the head") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HeadError("head is not JSON") from None
    if not isinstance(document, dict):
        raise HeadError("head is not a JSON object")
    return document


def _headers(document: dict[str, Any]) -> Headers:
    raw = document.get("headers")
    if not isinstance(raw, list) or len(raw) > 256:
        raise HeadError("head: headers must be a list of at most 256 pairs")
    headers: Headers = []
    for pair in raw:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(part, str) for part in pair)
            or not _HEADER_NAME.match(pair[0])
            or _BAD_VALUE.search(pair[1])
        ):
            raise HeadError("head: malformed header")
        headers.append((pair[0].lower(), pair[1]))
    return headers


def _trust(document: dict[str, Any]) -> tuple[str, ...]:
    raw = document.get("trust", [])
    if (
        not isinstance(raw, list)
        or len(raw) > MAX_TRUST
        or not all(isinstance(pem, str) and 0 < len(pem) <= MAX_TRUST_PEM for pem in raw)
    ):
        raise HeadError(f"request head: trust must be a list of at most {MAX_TRUST} PEM certificates")
    return tuple(raw)


async def body_chunks(reader: BufferedByteReceiveStream) -> AsyncIterator[bytes]:
    """The rest of the stream (after the head) until the peer half-closes."""
    while True:
        try:
            yield await reader.receive()
        except anyio.EndOfStream:
            return
