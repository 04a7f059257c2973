"""Scrubbing secret values out of what an upstream sends back, in every form ``forms`` lists.

``Scrub.apply`` looks for each form in several views of the data, so that escapings
which leave the meaning of the bytes alone cannot hide a value:

- the data with line breaks removed (base64 wrapped at 64 or 76 columns, say);
- percent-decoded (``%XX``, any letter case, any set of characters encoded);
- JSON-unescaped (``\\uXXXX`` including surrogate pairs, ``\\"``, ``\\/``, ``\\n``...);
- HTML/XML-unescaped (numeric character references and the five named entities);
- base64-decoded and hex-decoded: every run of 12 or more base64 characters
  (either alphabet, line breaks ignored) or 16 or more hex digits, decoded at
  each offset a group can start at, so a form encoded once more
  (``base64(base64(user:V))``, hex of a JSON echo holding a ``Basic`` value)
  is found too; a match replaces the characters that carry it.

Line breaks, literal or escaped, count for nothing in any view. A match is
replaced in the original data, over the whole span it covers there (escapes
included), by the same form of the placeholder. Overlapping matches are merged,
so no piece of a value survives next to a replacement.

``StreamScrubber`` does the same to a body that arrives in pieces: it holds back
the last ``Scrub.window`` bytes, more than the longest escaped form can span, so a
value split across reads or chunks is still found whole.

What cannot be caught: a value the upstream transforms in any other way before
reflecting it (encrypted, hashed, reversed, compressed inside the body, split into
pieces or across responses, base32...), and any strict part of a value.
"""

from __future__ import annotations

import base64
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sandbox_server.egress.forms import Form, unique

EXPANSION = 8
"""How many times longer than its pattern a match may be in the data (``\\u00XX`` takes 6 bytes per byte)."""
SLACK = 64
"""Extra bytes held back: edge characters of base64 forms, escaped, and a few line breaks."""

_Decode = Callable[[re.Match[bytes]], bytes]


def _unbreak(match: re.Match[bytes]) -> bytes:
    return b""


def _unpercent(match: re.Match[bytes]) -> bytes:
    if match.group(1) is None:
        return b""
    byte = bytes.fromhex(match.group(1).decode())
    return b"" if byte in (b"\r", b"\n") else byte


_JSON_ESCAPES = {
    b'"': b'"',
    b"\\": b"\\",
    b"/": b"/",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"",
    b"r": b"",
    b"t": b"\t",
}


def _code_point(code: int) -> bytes:
    return b"" if code in (0x0A, 0x0D) else chr(code).encode("utf-8", "surrogatepass")


def _unjson(match: re.Match[bytes]) -> bytes:
    high, low, single, escape = match.groups()
    if high is not None:
        code = 0x10000 + ((int(high, 16) - 0xD800) << 10) + (int(low, 16) - 0xDC00)
        return _code_point(code)
    if single is not None:
        return _code_point(int(single, 16))
    if escape is not None:
        return _JSON_ESCAPES[escape]
    return b""


_HTML_NAMED = {b"amp": b"&", b"lt": b"<", b"gt": b">", b"quot": b'"', b"apos": b"'"}


def _unhtml(match: re.Match[bytes]) -> bytes:
    decimal, hexadecimal, name = match.groups()
    if decimal is not None or hexadecimal is not None:
        code = int(decimal) if decimal is not None else int(hexadecimal, 16)
        return _code_point(code) if code <= 0x10FFFF else match.group(0)
    if name is not None:
        return _HTML_NAMED[name.lower()]
    return b""


_BREAKS = rb"[\r\n]+"
_VIEWS: tuple[tuple[bytes, re.Pattern[bytes], _Decode], ...] = (
    (b"%", re.compile(rb"%([0-9A-Fa-f]{2})|" + _BREAKS), _unpercent),
    (
        b"\\",
        re.compile(
            rb"\\u([dD][89abAB][0-9A-Fa-f]{2})\\u([dD][c-fC-F][0-9A-Fa-f]{2})"
            rb"|\\u([0-9A-Fa-f]{4})|\\([\"\\/bfnrt])|" + _BREAKS
        ),
        _unjson,
    ),
    (
        b"&",
        re.compile(
            rb"&(?:#([0-9]{1,7})|#[xX]([0-9A-Fa-f]{1,6})|(amp|lt|gt|quot|apos|AMP|LT|GT|QUOT));|" + _BREAKS
        ),
        _unhtml,
    ),
)
_LINE_BREAKS = re.compile(_BREAKS)
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


class _View:
    """``data`` with some escapes decoded, and the way back to positions in ``data``."""

    def __init__(
        self, data: bytes, pattern: re.Pattern[bytes] | None = None, decode: _Decode = _unbreak
    ) -> None:
        self._spans: list[tuple[int, int, int]] = []  # (start, end) in data, length once decoded
        self._index: tuple[list[int], list[int]] | None = None
        if pattern is None:
            self.text = data
            return

        def replace(match: re.Match[bytes]) -> bytes:
            out = decode(match)
            self._spans.append((match.start(), match.end(), len(out)))
            return out

        self.text = pattern.sub(replace, data)

    def _view_positions(self) -> tuple[list[int], list[int]]:
        if self._index is None:
            starts, ends, removed = [], [], 0
            for start, end, length in self._spans:
                starts.append(start - removed)
                ends.append(start - removed + length)
                removed += end - start - length
            self._index = (starts, ends)
        return self._index

    def _locate(self, position: int) -> tuple[int, int] | None:
        """Where the view character at ``position`` comes from: a decoded span, or ``None`` if copied."""
        if not self._spans:
            return None
        starts, ends = self._view_positions()
        k = bisect_right(starts, position) - 1
        if k >= 0 and position < ends[k]:
            return self._spans[k][0], self._spans[k][1]
        return None

    def _copied(self, position: int) -> int:
        """Position in the data of the copied view character at ``position``."""
        if not self._spans:
            return position
        starts, ends = self._view_positions()
        k = bisect_right(starts, position) - 1
        if k < 0:
            return position
        return self._spans[k][1] + (position - ends[k])

    def to_data(self, start: int, end: int) -> tuple[int, int]:
        """The span of the data that view characters ``start:end`` were decoded from."""
        first = self._locate(start)
        last = self._locate(end - 1)
        return (
            first[0] if first is not None else self._copied(start),
            last[1] if last is not None else self._copied(end - 1) + 1,
        )


def _unbase64(run: bytes, offset: int) -> bytes:
    piece = run[offset:].translate(_TO_STANDARD)
    piece = piece[:-1] if len(piece) % 4 == 1 else piece + b"=" * (-len(piece) % 4)
    return base64.b64decode(piece)


def _unhex(run: bytes, offset: int) -> bytes:
    piece = run[offset:]
    return bytes.fromhex(piece[: len(piece) // 2 * 2].decode())


@dataclass(frozen=True)
class _Runs:
    """An encoding that a form may be wrapped in once more: base64 (6 bits a character) or hex (4)."""

    pattern: re.Pattern[bytes]
    decode: Callable[[bytes, int], bytes]
    offsets: int
    """A run cut anywhere starts at one of this many offsets from a whole group."""
    bits: int


_RUNS = (
    _Runs(re.compile(rb"[A-Za-z0-9+/_-]{12,}"), _unbase64, 4, 6),
    _Runs(re.compile(rb"[0-9A-Fa-f]{16,}"), _unhex, 2, 4),
)


class _RunView:
    """Every long run of ``base`` in one encoding, decoded at each offset, joined by NUL bytes: a form
    encoded once more (``base64(base64(user:V))``, hex of a JSON echo holding a ``Basic`` value)."""

    def __init__(self, base: _View, runs: _Runs) -> None:
        self._base = base
        self._bits = runs.bits
        self._starts: list[int] = []  # where each decoded piece starts here
        self._chars: list[int] = []  # and where its first character is in ``base``
        pieces: list[bytes] = []
        position = 0
        for match in runs.pattern.finditer(base.text):
            for offset in range(runs.offsets):
                decoded = runs.decode(match.group(), offset)
                self._starts.append(position)
                self._chars.append(match.start() + offset)
                pieces.append(decoded)
                position += len(decoded) + 1
        self.text = b"\0".join(pieces)

    def to_data(self, start: int, end: int) -> tuple[int, int]:
        k = bisect_right(self._starts, start) - 1
        first, last = start - self._starts[k], end - self._starts[k]
        # Decoded byte i holds bits 8i..8i+8 of the run: the characters that hold any of them.
        first_char = self._chars[k] + 8 * first // self._bits
        return self._base.to_data(first_char, self._chars[k] - (-8 * last // self._bits))


def _views(data: bytes) -> list[_View | _RunView]:
    has_breaks = b"\n" in data or b"\r" in data
    base = _View(data, _LINE_BREAKS) if has_breaks else _View(data)
    views: list[_View | _RunView] = [base]
    views += [_View(data, pattern, decode) for trigger, pattern, decode in _VIEWS if trigger in data]
    views += [_RunView(base, runs) for runs in _RUNS if runs.pattern.search(base.text)]
    return views


@dataclass(frozen=True)
class Scrub:
    """A set of forms to replace; ``apply`` to whole strings, ``stream`` for bodies."""

    forms: tuple[Form, ...] = ()

    @property
    def window(self) -> int:
        """Bytes a stream scrubber holds back: more than any match can span."""
        longest = max((len(form.pattern) for form in self.forms), default=0)
        return EXPANSION * longest + SLACK if longest else 0

    def __bool__(self) -> bool:
        return bool(self.forms)

    def plus(self, forms: Iterable[Form]) -> Scrub:
        return Scrub(tuple(unique([*forms, *self.forms])))

    def _matches(self, data: bytes) -> list[tuple[int, int, bytes]]:
        found: list[tuple[int, int, bytes]] = []
        for view in _views(data):
            text = view.text
            folded: bytes | None = None
            for form in self.forms:
                if form.fold:
                    folded = text.lower() if folded is None else folded
                haystack = folded if form.fold and folded is not None else text
                start = haystack.find(form.pattern)
                while start >= 0:
                    end = start + len(form.pattern)
                    first, last = start, end
                    if form.left_partial and first > 0 and text[first - 1] in form.alphabet:
                        first -= 1
                    if form.right_partial and last < len(text) and text[last] in form.alphabet:
                        last += 1
                    found.append((*view.to_data(first, last), form.replacement))
                    start = haystack.find(form.pattern, start + 1)
        return found

    def spans(self, data: bytes) -> list[tuple[int, int, bytes]]:
        """Where forms occur in ``data``: sorted, non-overlapping ``(start, end, replacement)``."""
        if not self.forms or not data:
            return []
        merged: list[tuple[int, int, bytes]] = []
        for start, end, new in sorted(self._matches(data), key=lambda m: (m[0], -m[1])):
            if merged and start < merged[-1][1]:
                # Overlapping: one replacement covers both, so no piece of either survives.
                first, last, kept = merged[-1]
                merged[-1] = (first, max(last, end), kept)
            else:
                merged.append((start, end, new))
        return merged

    def apply(self, data: bytes) -> bytes:
        """``data`` with every form replaced."""
        return _render(data, self.spans(data))

    def apply_text(self, text: str) -> str:
        """``apply`` to a header field or reason phrase (Latin-1, as ``http`` reads them)."""
        return self.apply(text.encode("latin-1")).decode("latin-1")

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)


def _render(data: bytes, spans: list[tuple[int, int, bytes]]) -> bytes:
    if not spans:
        return data
    pieces: list[bytes] = []
    done = 0
    for start, end, new in spans:
        pieces += [data[done:start], new]
        done = end
    pieces.append(data[done:])
    return b"".join(pieces)


class StreamScrubber:
    """``Scrub.apply`` over a stream that arrives in arbitrary pieces.

    It holds back at least the last ``window`` bytes it received, unscrubbed, and
    releases the rest scrubbed. Whatever is decided about the released part is
    final: every match there, and any longer form, edge character or overlapping
    match that could change it, lies within the buffer searched. A match that
    straddles the cut is held back whole (unless holding it would keep more than
    ``HOLD_LIMIT`` windows: then it is released, replaced).
    """

    HOLD_LIMIT = 4

    def __init__(self, scrub: Scrub) -> None:
        self._scrub = scrub
        self._keep = scrub.window
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data
        cut = len(buffer) - self._keep
        if cut <= 0:
            self._pending = buffer
            return b""
        spans = self._scrub.spans(buffer)
        released = []
        for start, end, new in spans:
            if end <= cut:
                released.append((start, end, new))
            elif start < cut:
                if start >= len(buffer) - self.HOLD_LIMIT * self._keep:
                    cut = start
                else:
                    released.append((start, end, new))
                    cut = end
                break
            else:
                break
        self._pending = buffer[cut:]
        return _render(buffer[:cut], released)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._scrub.apply(rest)


class StreamReplacer(StreamScrubber):
    """A ``StreamScrubber`` for literal byte strings (each also found escaped, as ``Scrub`` does)."""

    def __init__(self, replacements: Mapping[bytes, bytes]) -> None:
        super().__init__(Scrub(tuple(unique(Form(old, new) for old, new in replacements.items()))))
