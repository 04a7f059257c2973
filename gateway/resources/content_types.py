"""What an uploaded file is, judged from its bytes rather than from what the client declared.

The type a client declares for a part is only a claim; the harness decides how to show a file
to the model (an image, a PDF, plain text) from the bytes alone, so a file that says it is a PNG
but is not one is never sent to the model as an image. ``Sniffer`` is fed the bytes as they
stream in (it keeps a few leading bytes and an incremental UTF-8 decoder, never the file).
"""

from __future__ import annotations

import codecs
import re

PDF = "application/pdf"
PNG = "image/png"
JPEG = "image/jpeg"
GIF = "image/gif"
WEBP = "image/webp"
TEXT = "text/plain"
OCTET_STREAM = "application/octet-stream"

IMAGE_TYPES = frozenset({PNG, JPEG, GIF, WEBP})
"""Types the Messages API takes as ``image`` blocks."""
DOCUMENT_TYPES = frozenset({PDF, TEXT})
"""Types the Messages API takes as ``document`` blocks (a PDF, or plain text)."""
SNIFFED = IMAGE_TYPES | DOCUMENT_TYPES

_HEAD = 16
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
EXTENSIONS = {PDF: ".pdf", PNG: ".png", JPEG: ".jpg", GIF: ".gif", WEBP: ".webp", TEXT: ".txt"}


def _from_head(head: bytes) -> str | None:
    if head.startswith(b"%PDF-"):
        return PDF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return GIF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    return None


class Sniffer:
    """Fed every chunk of a file in order; ``result()`` names its type."""

    def __init__(self) -> None:
        self._head = b""
        self._size = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = True

    def feed(self, chunk: bytes) -> None:
        if len(self._head) < _HEAD:
            self._head += chunk[: _HEAD - len(self._head)]
        self._size += len(chunk)
        if self._text:
            try:
                self._decoder.decode(chunk)
            except UnicodeDecodeError:
                self._text = False
            else:
                self._text = b"\x00" not in chunk

    def result(self) -> str:
        known = _from_head(self._head)
        if known is not None:
            return known
        if self._text and self._size > 0:
            try:
                self._decoder.decode(b"", final=True)  # a sequence cut off at the end is not text
            except UnicodeDecodeError:
                return OCTET_STREAM
            return TEXT
        return OCTET_STREAM


def sniff(data: bytes) -> str:
    sniffer = Sniffer()
    sniffer.feed(data)
    return sniffer.result()


def declared(value: str | None) -> str | None:
    """A part's declared ``Content-Type`` without parameters, or None when absent, malformed or
    ``application/octet-stream`` (what clients send for bytes of no known type: no claim at all)."""
    if not value:
        return None
    essence = value.split(";", 1)[0].strip().lower()
    return essence if _MIME.match(essence) and essence != OCTET_STREAM else None


def recorded(declared_type: str | None, sniffed_type: str) -> str:
    """The ``mime_type`` a file is listed with. The bytes win wherever they can tell: a file
    declared as one of the sniffable types but not one is listed as what it is. A declaration
    the bytes cannot contradict (``text/csv`` for UTF-8 text, ``application/zip`` for binary)
    is kept, because it says more than ``text/plain`` or ``application/octet-stream``; a
    ``text/*`` declaration for bytes that are not UTF-8 text is not."""
    if declared_type is None or declared_type in SNIFFED or sniffed_type in IMAGE_TYPES | {PDF}:
        return sniffed_type
    if sniffed_type == TEXT:
        return declared_type
    return OCTET_STREAM if declared_type.startswith("text/") else declared_type
