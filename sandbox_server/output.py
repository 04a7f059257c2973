"""Collect a command's output in bounded memory, keeping the head and the tail.

The start of the output usually says what ran and the end says how it finished,
so when there is too much the middle goes, replaced by a marker that says how
much was dropped. Memory stays at about ``limit`` bytes however much is read; the
reader separately stops at a hard ceiling (``SandboxLimits.output_ceiling``).
"""

from __future__ import annotations


def omitted_marker(count: int) -> str:
    """The line that stands in for the dropped middle of the output."""
    return f"\n[... {count} bytes of output omitted ...]\n"


class CappedOutput:
    """Bytes fed in order; ``text()`` returns at most ``limit`` of them (plus the marker)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head_size = limit // 2
        self._tail_size = limit - self._head_size
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0
        """Bytes seen so far, kept or not."""

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self._head_size - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self._tail += chunk
        if len(self._tail) > 2 * self._tail_size:
            # Trim in batches so a stream of small chunks stays linear in time.
            del self._tail[: len(self._tail) - self._tail_size]

    @property
    def omitted(self) -> int:
        return max(0, self.total - self.limit)

    def text(self) -> str:
        """The kept output as text (invalid UTF-8 replaced), with the marker where bytes were dropped."""
        tail = bytes(self._tail[-self._tail_size :]) if self._tail_size else b""
        if not self.omitted:
            return (bytes(self._head) + tail).decode("utf-8", errors="replace")
        # A character cut at either edge shows as one replacement character.
        head = bytes(self._head).decode("utf-8", errors="replace")
        return head + omitted_marker(self.omitted) + tail.decode("utf-8", errors="replace")
