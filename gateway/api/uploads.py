"""``POST /v1/files``: a ``multipart/form-data`` upload, streamed to disk as it arrives.

The body is parsed with python-multipart's streaming parser (the one Starlette's ``form()``
drives) rather than ``request.form()``: that would spool the whole part into a temporary file
of its own (in ``/tmp``, often memory) with no size limit before we saw a byte. Here each
chunk of the ``file`` part goes straight to ``resources.uploads.Receiver`` under the data
dir, which hashes, sniffs and counts it; past ``TETHER_MAX_UPLOAD_BYTES`` the upload fails with
413 and its partial file is removed. Fields are the SDK's: ``file`` and ``expires_in_seconds``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio.to_thread
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from gateway.api.state import state
from gateway.errors import InvalidRequest, RequestTooLarge
from gateway.resources import content_types, files, uploads

FIELDS = ("file", "expires_in_seconds")
MAX_FIELD_BYTES = 64
ENVELOPE_BYTES = 64 * 1024
"""What a body may carry beyond the file's bytes (boundaries, part headers, the other field)."""
DRAIN_BYTES = 16 * 1024 * 1024
"""After a 413, this much more of the body is read and dropped so the client, still sending,
reads the answer instead of a reset connection; a client sending more is cut off."""


class _Form:
    """python-multipart callbacks: each part's headers, the ``file`` part's bytes queued for the
    receiver (written from a worker thread between parser calls), the other field kept."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: list[bytes] = []
        self.file_size = 0
        self.file_seen = False
        self.file_done = False
        self.filename: str | None = None
        self.declared_type: str | None = None
        self.fields: dict[str, bytearray] = {}
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""
        self._current: str | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers, self._current = {}, None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequest("multipart: each part needs Content-Disposition: form-data; name=...")
        name = options[b"name"].decode("utf-8", "replace")
        if name not in FIELDS:
            raise InvalidRequest(f"{name}: unknown field")
        if name == "file":
            if self.file_seen:
                raise InvalidRequest("file: only one file per upload")
            self.file_seen = True
            raw_filename = options.get(b"filename")
            self.filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
            self.declared_type = content_types.declared(
                self._headers.get(b"content-type", b"").decode("latin-1")
            )
        elif name in self.fields:
            raise InvalidRequest(f"{name}: given more than once")
        else:
            self.fields[name] = bytearray()
        self._current = name

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current == "file":
            self.file_size += end - start
            if self.file_size > self.limit:
                raise RequestTooLarge(f"file: exceeds the upload limit of {self.limit} bytes")
            self.pending.append(bytes(data[start:end]))
        elif self._current is not None:
            field = self.fields[self._current]
            field += data[start:end]
            if len(field) > MAX_FIELD_BYTES:
                raise InvalidRequest(f"{self._current}: too long")

    def _part_end(self) -> None:
        if self._current == "file":
            self.file_done = True
        self._current = None

    def field(self, name: str) -> str | None:
        value = self.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")


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


async def _receive(request: Request, form: _Form, receiver: uploads.Receiver) -> None:
    """Feed the body through the parser, writing the file's bytes as they are parsed."""
    parser = MultipartParser(boundary(request), form.callbacks())  # type: ignore[arg-type]
    chunks = request.stream().__aiter__()
    received = 0
    try:
        async for chunk in chunks:
            # The whole body, not only the file part: the parser skips any preamble and epilogue.
            received += len(chunk)
            if received > form.limit + ENVELOPE_BYTES:
                raise RequestTooLarge(f"file: exceeds the upload limit of {form.limit} bytes")
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise InvalidRequest(f"multipart: {exc}") from None
            if form.pending:
                batch, form.pending = form.pending, []
                await anyio.to_thread.run_sync(receiver.write, batch)
    except RequestTooLarge:
        await drain(chunks)
        raise
    parser.finalize()
    if not form.file_seen:
        raise InvalidRequest("file: field required")
    if not form.file_done:
        raise InvalidRequest("multipart: the body ended inside the file part")


async def upload(request: Request) -> JSONResponse:
    gateway = state(request)
    limit = gateway.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit():
        if int(declared) > limit + ENVELOPE_BYTES:
            await drain(request.stream().__aiter__())
            raise RequestTooLarge(f"file: exceeds the upload limit of {limit} bytes")
    form = _Form(limit)
    directory = uploads.files_dir(gateway.settings.data_dir)
    receiver = await anyio.to_thread.run_sync(uploads.Receiver, directory, limit)
    try:
        await _receive(request, form, receiver)
        body = await uploads.create(
            gateway.store,
            receiver,
            filename=form.filename,
            declared_type=form.declared_type,
            expires_in_seconds=uploads.expiry(form.field("expires_in_seconds")),
        )
    finally:
        receiver.discard()  # close and unlink, not awaited: a cancelled request must clean up too
    return JSONResponse(files.render(body))
