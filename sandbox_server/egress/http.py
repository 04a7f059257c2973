"""HTTP/1.1 on the wire, as much as a rewriting proxy needs: heads, body framing, chunks.

Parsing is strict on purpose. The proxy decides where a secret may go from
what it parses, and an upstream server that parses the same bytes differently
(request smuggling: both ``Content-Length`` and ``Transfer-Encoding``, folded
headers, bare line feeds) could be made to see a request the proxy never
checked. Anything ambiguous is refused with 400 rather than guessed at.

Header names and values are ``str`` decoded as Latin-1, which maps every byte to
one character and back, so nothing is lost in either direction.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

MAX_HEAD = 64 * 1024
"""Largest request or response head (start line and headers), also the stream buffer limit."""
MAX_HEADERS = 256
MAX_CHUNK_LINE = 4096
READ_SIZE = 64 * 1024

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HEX = re.compile(rb"^[0-9A-Fa-f]{1,16}$")
_VERSIONS = ("HTTP/1.0", "HTTP/1.1")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection, not the message: never forwarded as received."""

LAST_CHUNK = b"0\r\n\r\n"


class HttpError(Exception):
    """A message the proxy will not handle; ``status`` is what the client gets, ``message`` is safe to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Headers:
    """Ordered header fields; names match case-insensitively and keep their spelling."""

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields = list(fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._fields))

    def __len__(self) -> int:
        return len(self._fields)

    def get(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self._fields if key.lower() == lowered), None)

    def get_all(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self._fields if key.lower() == lowered]

    def tokens(self, name: str) -> list[str]:
        """Comma-separated list values of every ``name`` field, lower-cased (``Connection``, ``Transfer-Encoding``)."""
        return [t.strip().lower() for value in self.get_all(name) for t in value.split(",") if t.strip()]

    def remove(self, *names: str) -> None:
        lowered = {name.lower() for name in names}
        self._fields = [(k, v) for k, v in self._fields if k.lower() not in lowered]

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` field by one, at the position of the first (or at the end)."""
        lowered = name.lower()
        for index, (key, _) in enumerate(self._fields):
            if key.lower() == lowered:
                self._fields[index] = (key, value)
                self._fields[index + 1 :] = [
                    (k, v) for k, v in self._fields[index + 1 :] if k.lower() != lowered
                ]
                return
        self._fields.append((name, value))

    def add(self, name: str, value: str) -> None:
        self._fields.append((name, value))

    def replace_values(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields = list(fields)

    def copy(self) -> Headers:
        return Headers(self._fields)

    def without_hop_by_hop(self) -> Headers:
        """A copy without hop-by-hop fields, including any the ``Connection`` header names."""
        named = set(self.tokens("connection"))
        return Headers(
            (k, v) for k, v in self._fields if k.lower() not in HOP_BY_HOP and k.lower() not in named
        )

    def serialize(self) -> bytes:
        return b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in self._fields)


@dataclass
class RequestHead:
    method: str
    target: str
    version: str
    headers: Headers

    def serialize(self) -> bytes:
        return (
            f"{self.method} {self.target} {self.version}\r\n".encode("latin-1")
            + self.headers.serialize()
            + b"\r\n"
        )


@dataclass
class ResponseHead:
    version: str
    status: int
    reason: str
    headers: Headers

    def serialize(self) -> bytes:
        line = f"{self.version} {self.status} {self.reason}\r\n".encode("latin-1")
        return line + self.headers.serialize() + b"\r\n"


async def _read_head(reader: asyncio.StreamReader, status: int, what: str) -> bytes | None:
    """The raw head up to the blank line; ``None`` on a clean end of stream before any byte."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip(b"\r\n"):
            return None
        raise HttpError(status, f"incomplete {what} head") from None
    except asyncio.LimitOverrunError:
        raise HttpError(431 if status == 400 else status, f"{what} head too large") from None


def _parse_fields(lines: list[bytes], status: int) -> Headers:
    if len(lines) > MAX_HEADERS:
        raise HttpError(431 if status == 400 else status, "too many header fields")
    fields: list[tuple[str, str]] = []
    for line in lines:
        if not line or line[:1] in (b" ", b"\t"):
            raise HttpError(status, "malformed header field (folded or empty line)")
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(status, "malformed header field name")
        value = value.strip(b" \t")
        if any(c in value for c in (b"\r", b"\n", b"\x00")):
            raise HttpError(status, "control character in a header value")
        fields.append((name.decode("latin-1"), value.decode("latin-1")))
    return Headers(fields)


async def read_request_head(reader: asyncio.StreamReader) -> RequestHead | None:
    """The next request head on a client connection, ``None`` when the client closed it cleanly."""
    raw = await _read_head(reader, 400, "request")
    if raw is None:
        return None
    lines = raw[:-4].lstrip(b"\r\n").split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not parts[1]:
        raise HttpError(400, "malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    if version not in _VERSIONS:
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in target):
        raise HttpError(400, "control character in the request target")
    return RequestHead(method, target, version, _parse_fields(lines[1:], 400))


async def read_response_head(reader: asyncio.StreamReader) -> ResponseHead:
    """The next response head from an upstream server (502 if it is missing or malformed)."""
    raw = await _read_head(reader, 502, "response")
    if raw is None:
        raise HttpError(502, "the upstream server closed the connection without a response")
    lines = raw[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version.decode("latin-1") not in _VERSIONS or len(code) != 3 or not code.isdigit():
        raise HttpError(502, "malformed response from the upstream server")
    return ResponseHead(
        version.decode("latin-1"), int(code), reason.decode("latin-1"), _parse_fields(lines[1:], 502)
    )


@dataclass(frozen=True)
class Framing:
    """How a message body is delimited: none, a length, chunks, or the end of the connection."""

    kind: Literal["none", "length", "chunked", "close"]
    length: int = 0


NO_BODY = Framing("none")


def _content_length(headers: Headers, status: int) -> int | None:
    values = [v.strip() for value in headers.get_all("content-length") for v in value.split(",")]
    if not values:
        return None
    if len(set(values)) != 1 or not values[0].isdigit() or len(values[0]) > 18:
        raise HttpError(status, "invalid Content-Length")
    return int(values[0])


def request_framing(head: RequestHead) -> Framing:
    """Body framing of a request; 400 for the ambiguous combinations smuggling relies on."""
    codings = head.headers.tokens("transfer-encoding")
    length = _content_length(head.headers, 400)
    if head.headers.get_all("transfer-encoding"):
        if length is not None:
            raise HttpError(400, "both Transfer-Encoding and Content-Length")
        if codings != ["chunked"]:
            raise HttpError(501, "unsupported Transfer-Encoding")
        return Framing("chunked")
    if length is None:
        return NO_BODY
    return Framing("length", length)


def response_framing(method: str, head: ResponseHead) -> Framing:
    """Body framing of a response to ``method`` (RFC 9112 section 6.3)."""
    if method == "HEAD" or head.status < 200 or head.status in (204, 304):
        return NO_BODY
    if head.headers.get_all("transfer-encoding"):
        if head.headers.tokens("transfer-encoding") != ["chunked"]:
            raise HttpError(502, "unsupported Transfer-Encoding from the upstream server")
        return Framing("chunked")
    length = _content_length(head.headers, 502)
    if length is None:
        return Framing("close")
    return Framing("length", length) if length else NO_BODY


def wants_close(version: str, headers: Headers) -> bool:
    """Whether the sender of a message with these headers will close the connection after it."""
    tokens = headers.tokens("connection")
    if "close" in tokens:
        return True
    return version == "HTTP/1.0" and "keep-alive" not in tokens


async def _read_exactly(reader: asyncio.StreamReader, size: int, status: int) -> AsyncIterator[bytes]:
    remaining = size
    while remaining:
        data = await reader.read(min(READ_SIZE, remaining))
        if not data:
            raise HttpError(status, "the connection closed in the middle of a body")
        remaining -= len(data)
        yield data


async def _read_line(reader: asyncio.StreamReader, status: int) -> bytes:
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise HttpError(status, "the connection closed in the middle of a chunked body") from None
    except asyncio.LimitOverrunError:
        raise HttpError(status, "chunk line too long") from None
    if len(line) > MAX_CHUNK_LINE:
        raise HttpError(status, "chunk line too long")
    return line[:-2]


async def iter_body(reader: asyncio.StreamReader, framing: Framing, status: int) -> AsyncIterator[bytes]:
    """The decoded body bytes (chunk framing removed, trailers dropped); errors become ``HttpError(status)``."""
    if framing.kind == "length":
        async for data in _read_exactly(reader, framing.length, status):
            yield data
    elif framing.kind == "chunked":
        while True:
            size_text = (await _read_line(reader, status)).split(b";", 1)[0].strip(b" \t")
            if not _HEX.match(size_text):
                raise HttpError(status, "malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                while await _read_line(reader, status):
                    pass  # trailer fields: not forwarded
                return
            async for data in _read_exactly(reader, size, status):
                yield data
            if await _read_line(reader, status):
                raise HttpError(status, "malformed chunk terminator")
    elif framing.kind == "close":
        while data := await reader.read(READ_SIZE):
            yield data


def is_token(text: str) -> bool:
    """Whether ``text`` may be a header field name."""
    return bool(_TOKEN.fullmatch(text.encode("latin-1")))


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def error_response(status: int, message: str, *, reason: str | None = None) -> bytes:
    """A small plain-text response from the proxy itself; the connection is closed after it."""
    body = f"tether egress proxy: {message}\n".encode("utf-8", errors="replace")
    head = ResponseHead(
        "HTTP/1.1",
        status,
        reason or _REASONS.get(status, "Error"),
        Headers(
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
                ("X-Tether-Egress", "refused" if status in (403, 421) else "error"),
            ]
        ),
    )
    return head.serialize() + body


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    413: "Content Too Large",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
