"""Reading text out of a file for the model: line by line, bounded, binary files recognised."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

MAX_OUTPUT_BYTES = 256 * 1024
"""Cap on the text ``read`` and ``grep`` return; a marker says when it was hit."""

BINARY_SNIFF_BYTES = 8192


def iter_lines(f: BinaryIO, keep: int) -> Iterator[bytes]:
    """Yield each line without its newline, holding at most ``keep`` bytes of any one line.

    The remainder of a longer line is read and dropped in ``keep``-sized pieces, so
    line numbers stay right and a single gigantic line never sits in memory.
    """
    while True:
        chunk = f.readline(keep)
        if not chunk:
            return
        if chunk.endswith(b"\n"):
            yield chunk[:-1]
            continue
        if len(chunk) == keep:
            while True:
                rest = f.readline(keep)
                if not rest or rest.endswith(b"\n"):
                    break
        yield chunk


def decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").removesuffix("\r")


def looks_binary(head: bytes) -> bool:
    return b"\x00" in head


def cut_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
