"""Content codings the proxy removes from responses it scrubs, so that it reads what the client will.

The proxy asks for ``Accept-Encoding: identity``, but an upstream may answer
compressed anyway. A response the proxy scrubs is decoded here (``gzip``,
``x-gzip``, ``deflate``, zlib-wrapped or raw, stacked in any order) and sent on
without ``Content-Encoding``; any other coding (``br``, ``zstd``, ``compress``,
unknown names) is refused, since bytes the proxy cannot read cannot be scrubbed.

Decoding is lazy and bounded: each step yields at most ``OUTPUT_CHUNK`` bytes,
so a small compressed body that inflates hugely (a "zip bomb") costs memory in
proportion to one chunk and time in proportion to what the client reads.
"""

from __future__ import annotations

import zlib
from collections.abc import Generator, Iterable, Iterator

OUTPUT_CHUNK = 64 * 1024
DECODABLE = frozenset({"gzip", "x-gzip", "deflate"})


class CodingError(Exception):
    """A body the proxy cannot decode; the message names the reason and never holds body bytes."""


def decoder_for(codings: list[str]) -> Decoder | None:
    """A decoder for ``Content-Encoding`` ``codings`` (lower-cased, in the order applied), ``None`` if identity.

    Raises ``CodingError`` naming the first coding the proxy cannot decode.
    """
    applied = [coding for coding in codings if coding != "identity"]
    for coding in applied:
        if coding not in DECODABLE:
            # The value itself is never echoed: a host that reflects a header could put a secret there.
            raise CodingError(
                "the response's Content-Encoding cannot be decoded by the proxy (gzip and deflate can)"
            )
    return Decoder(applied) if applied else None


class Decoder:
    """Undoes ``codings`` (last applied, first undone); ``feed`` pieces of the body, then ``finish``."""

    def __init__(self, codings: list[str]) -> None:
        self._stages = [_Inflate(coding) for coding in reversed(codings)]

    def feed(self, data: bytes) -> Iterator[bytes]:
        chunks: Iterable[bytes] = (data,)
        for stage in self._stages:
            chunks = stage.pipe(chunks, final=False)
        return iter(chunks)

    def finish(self) -> Iterator[bytes]:
        chunks: Iterable[bytes] = ()
        for stage in self._stages:
            chunks = stage.pipe(chunks, final=True)
        return iter(chunks)


class _Inflate:
    """One ``gzip`` (several members allowed, zero padding after them ignored) or ``deflate`` layer."""

    def __init__(self, coding: str) -> None:
        self._gzip = coding in ("gzip", "x-gzip")
        self._name = coding
        self._inflater: zlib._Decompress | None = None
        self._head = b""
        """``deflate`` input held until its first two bytes tell zlib-wrapped from raw."""

    def pipe(self, chunks: Iterable[bytes], *, final: bool) -> Iterator[bytes]:
        for chunk in chunks:
            yield from self._feed(chunk)
        if final:
            self._finish()

    def _start(self, data: bytes) -> zlib._Decompress:
        if self._gzip:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        cmf, flg = data[0], data[1]
        wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def _feed(self, data: bytes) -> Iterator[bytes]:
        data, self._head = self._head + data, b""
        while data:
            if self._inflater is not None and self._inflater.eof:
                if not data.strip(b"\0"):
                    return  # padding after the last gzip member
                if not self._gzip:
                    raise CodingError("data after the end of a deflate body")
                self._inflater = None  # another gzip member
            if self._inflater is None:
                if not self._gzip and len(data) < 2:
                    self._head = data
                    return
                self._inflater = self._start(data)
            data = yield from self._inflate(self._inflater, data)

    def _inflate(self, inflater: zlib._Decompress, data: bytes) -> Generator[bytes, None, bytes]:
        """Yield what ``data`` inflates to; return the input left over after the end of the stream."""
        while True:
            try:
                out = inflater.decompress(data, OUTPUT_CHUNK)
            except zlib.error:
                raise CodingError(f"the {self._name} body is corrupt") from None
            if out:
                yield out
            if inflater.eof:
                return inflater.unused_data
            data = inflater.unconsumed_tail
            if not data and len(out) < OUTPUT_CHUNK:
                return b""

    def _finish(self) -> None:
        if self._head or (self._inflater is not None and not self._inflater.eof):
            raise CodingError(f"the {self._name} body ended early")
