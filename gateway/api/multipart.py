"""Streamed ``multipart/form-data`` bodies: what ``/v1/files`` and ``/v1/skills`` uploads share.

Both parse with python-multipart's streaming parser (the one Starlette's ``form()`` drives)
rather than ``request.form()``, which would spool each part into a temporary file of its own
with no size limit before we saw a byte. A form (a ``PartForm``) collects each part's headers
and decides what its bytes are; the bytes it queues in ``pending`` are written by the caller's
``write`` from a worker thread between parser calls. A body past its limit is a 413, after
which a bounded amount more is read and dropped (``drain``) so the client reads the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio.to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from gateway.errors import InvalidRequest, RequestTooLarge

DRAIN_BYTES = 16 * 1024 * 1024
"""After a 413, this much more of the body is read and dropped so the client, still sending,
reads the answer instead of a reset connection; a client sending more is cut off."""


class PartForm:
    """python-multipart callbacks: each part's headers collected, then handed to
    ``headers_finished``; subclasses take the part's bytes in ``part_data``."""

    max_header_bytes: int | None = None
    """A bound on one part's header (name and value), or None for none beyond the body's."""

    def __init__(self) -> None:
        self.pending: list[Any] = []
        self.headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def _part_begin(self) -> None:
        self.headers = {}
        self.part_begin()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]
        self._check_header()

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        self._check_header()

    def _check_header(self) -> None:
        limit = self.max_header_bytes
        if limit is not None and len(self._name) + len(self._value) > limit:
            raise InvalidRequest(f"multipart: a part header is longer than {limit} bytes")

    def _header_end(self) -> None:
        self.headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def disposition(self) -> tuple[bytes, dict[bytes, bytes]]:
        """The part's ``Content-Disposition`` options; a 400 unless it is a named form field."""
        disposition, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("multipart: each part needs Content-Disposition: form-data; name=...")
        return disposition, options

    def part_begin(self) -> None: ...

    def headers_finished(self) -> None: ...

    def part_data(self, data: bytes, start: int, end: int) -> None: ...

    def part_end(self) -> None: ...


def boundary(request: Request, parts: str = "a 'file' part") -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data":
        raise InvalidRequest(f"Content-Type: an upload is multipart/form-data with {parts}")
    found = options.get(b"boundary")
    if not found:
        raise InvalidRequest("Content-Type: multipart/form-data needs a boundary")
    return found


async def drain(chunks: AsyncIterator[bytes]) -> None:
    dropped = 0
    try:
        async for chunk in chunks:
            dropped += len(chunk)
            if dropped > DRAIN_BYTES:
                return
    except ClientDisconnect:
        return


async def refuse_declared_over(request: Request, limit: int, message: str) -> None:
    """A 413 before reading, when ``Content-Length`` already says the body is over ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        await drain(request.stream().__aiter__())
        raise RequestTooLarge(message)


async def receive(
    request: Request,
    form: PartForm,
    parts: str,
    *,
    limit: int,
    too_large: str,
    write: Callable[[list[Any]], object],
) -> None:
    """Feed the body through the parser, ``write``-ing what the form queues as it is parsed.
    The whole body counts toward ``limit`` (the parser skips any preamble and epilogue)."""
    parser = MultipartParser(boundary(request, parts), form.callbacks())  # type: ignore[arg-type]
    chunks = request.stream().__aiter__()
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise RequestTooLarge(too_large)
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidRequest(f"multipart: {exc}") from None
            if form.pending:
                batch, form.pending = form.pending, []
                await anyio.to_thread.run_sync(write, batch)
    except RequestTooLarge:
        await drain(chunks)
        raise
    parser.finalize()
