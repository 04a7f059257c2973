"""The forms a secret value can take in a response, each paired with the same form of its placeholder.

Only byte strings that carry the whole value are forms (a part of the value is
not one; see ``scrub`` for what that leaves). A value ``V`` is first taken in
each of its variants, as a host may have written it before encoding it further:

- ``V`` itself;
- JSON-escaped, as an echo service's JSON holds it (``\\"``, ``\\\\``, ``\\uXXXX``
  for non-ASCII or not, ``/`` escaped or not) and HTML-escaped;
- when ``V`` is not ASCII: read as Latin-1 and written as UTF-8 (and JSON-escaped
  so), and the reverse, as hosts that decode header bytes as Latin-1 echo it.

(For an ordinary ASCII key without quotes, backslashes or ``<>&'`` every variant
is ``V`` itself.) Each variant is then looked for:

- as is, in any ASCII letter case (so a host that upper-cases it is caught too),
  and with spaces as ``+`` when it has spaces (form encoding);
- in hexadecimal, in any letter case;
- in base64, standard and URL-safe alphabets: the whole padded encoding, and,
  for each of the three alignments a variant can have inside a longer base64
  run (it starts at a byte offset of 0, 1 or 2 modulo 3 of what was encoded,
  as in ``Basic base64(user:V)``), the characters that depend on the variant
  alone. The character at either edge that mixes its first or last bits with a
  neighbour's is replaced too when present (``left_partial``/``right_partial``),
  so no bit of it is left behind.

Escapings that do not change what the bytes mean when they wrap a form
(percent-encoding, JSON and HTML escapes, line breaks) are undone by ``scrub``
before these forms are looked for, so they are not multiplied out here.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

B64_STANDARD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B64_URLSAFE = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

_ENCODERS: tuple[tuple[Callable[[bytes], bytes], bytes], ...] = (
    (base64.b64encode, B64_STANDARD),
    (base64.urlsafe_b64encode, B64_URLSAFE),
)


@dataclass(frozen=True)
class Form:
    """One form of a value: ``pattern`` is replaced by ``replacement`` wherever it occurs."""

    pattern: bytes
    """Without line breaks; lower-cased when ``fold``."""
    replacement: bytes
    fold: bool = False
    """Match in any ASCII letter case."""
    alphabet: bytes = b""
    """For base64 forms: the characters an edge character may be (see the flags below)."""
    left_partial: bool = False
    """The base64 character just before ``pattern``, when it is one, carries the value's first bits."""
    right_partial: bool = False
    """The base64 character just after ``pattern``, when it is one, carries the value's last bits."""


def strip_breaks(data: bytes) -> bytes:
    return data.replace(b"\r", b"").replace(b"\n", b"")


def _b64_run(encode: Callable[[bytes], bytes], value: bytes, align: int, *, whole: bool) -> bytes:
    """The characters of ``value`` base64-encoded after ``align`` other bytes.

    ``whole=False``: only characters made of ``value``'s bits alone; ``whole=True``: every
    character holding at least one of its bits (neighbouring bits zero, as padding has).
    """
    text = encode(bytes(align) + value + bytes(3))
    first_bit, end_bit = 8 * align, 8 * (align + len(value))
    if whole:
        return text[first_bit // 6 : -(-end_bit // 6)]
    return text[-(-first_bit // 6) : end_bit // 6]


def value_forms(value: bytes, placeholder: bytes) -> list[Form]:
    """Every form of ``value`` (see the module docstring), to be replaced by that form of ``placeholder``."""
    value = strip_breaks(value)
    forms: list[Form] = []
    if b" " in value:
        forms.append(Form(value.replace(b" ", b"+").lower(), placeholder, fold=True))
    for variant in _variants(value):
        forms += _encoded(variant, placeholder)
    return unique(forms)


def _encoded(variant: bytes, placeholder: bytes) -> list[Form]:
    forms = [
        Form(variant.lower(), placeholder, fold=True),
        Form(variant.hex().encode(), placeholder.hex().encode(), fold=True),
    ]
    for encode, alphabet in _ENCODERS:
        if len(variant) % 3:
            forms.append(Form(encode(variant), encode(placeholder)))
        for align in range(3):
            first_bit, end_bit = 8 * align, 8 * (align + len(variant))
            forms.append(
                Form(
                    _b64_run(encode, variant, align, whole=False),
                    _b64_run(encode, placeholder, align, whole=True),
                    alphabet=alphabet,
                    left_partial=first_bit % 6 != 0,
                    right_partial=end_bit % 6 != 0,
                )
            )
    return forms


def _json(text: str, *, ascii_only: bool) -> list[bytes]:
    escaped = json.dumps(text, ensure_ascii=ascii_only)[1:-1]
    return [escaped.encode(), escaped.replace("/", "\\/").encode()]


def _variants(value: bytes) -> list[bytes]:
    """``value`` as a host may have written it before encoding it (see the module docstring)."""
    texts = [value.decode("utf-8", "surrogateescape")]
    variants = [value]
    if not value.isascii():
        variants.append(value.decode("latin-1").encode("utf-8"))
        texts.append(value.decode("latin-1"))
        try:
            variants.append(value.decode("utf-8").encode("latin-1"))
        except (UnicodeDecodeError, UnicodeEncodeError):
            pass
    for text in texts:
        for ascii_only in (True, False):
            try:
                variants += _json(text, ascii_only=ascii_only)
            except UnicodeEncodeError:  # lone surrogates (bytes that were not UTF-8) and not ascii_only
                pass
        variants.append(html.escape(text).encode("utf-8", "surrogateescape"))
    return list(dict.fromkeys(variants))


def exact_form(produced: bytes, original: bytes) -> Form:
    """A string the proxy itself produced (``produced``), mapped back to what the client sent."""
    return Form(strip_breaks(produced), original)


def unique(forms: Iterable[Form]) -> list[Form]:
    """``forms`` without empty patterns or repeats (the first of equal patterns wins)."""
    seen: set[tuple[bytes, bool]] = set()
    kept: list[Form] = []
    for form in forms:
        key = (form.pattern, form.fold)
        if form.pattern and key not in seen:
            seen.add(key)
            kept.append(form)
    return kept
