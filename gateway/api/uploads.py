"""``POST /v1/files``: a ``multipart/form-data`` upload, streamed to disk as it arrives.

The body is parsed as it streams (``gateway.api.multipart``): each chunk of the ``file`` part
goes straight to ``resources.uploads.Receiver`` under the data dir, which hashes, sniffs and
counts it; past ``TETHER_MAX_UPLOAD_BYTES`` the upload fails with 413 and its partial file is
removed. Fields are the SDK's: ``file`` and ``expires_in_seconds``.
"""

from __future__ import annotations

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.multipart import PartForm, receive, refuse_declared_over
from gateway.api.state import state
from gateway.errors import InvalidRequest, RequestTooLarge
from gateway.resources import content_types, files, uploads

FIELDS = ("file", "expires_in_seconds")
MAX_FIELD_BYTES = 64
ENVELOPE_BYTES = 64 * 1024
"""What a body may carry beyond the file's bytes (boundaries, part headers, the other field)."""


class _Form(PartForm):
    """The ``file`` part's bytes queued for the receiver, the other field kept."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.file_size = 0
        self.file_seen = False
        self.file_done = False
        self.filename: str | None = None
        self.declared_type: str | None = None
        self.fields: dict[str, bytearray] = {}
        self._current: str | None = None

    def part_begin(self) -> None:
        self._current = None

    def headers_finished(self) -> None:
        _, options = self.disposition()
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
                self.headers.get(b"content-type", b"").decode("latin-1")
            )
        elif name in self.fields:
            raise InvalidRequest(f"{name}: given more than once")
        else:
            self.fields[name] = bytearray()
        self._current = name

    def part_data(self, data: bytes, start: int, end: int) -> None:
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

    def part_end(self) -> None:
        if self._current == "file":
            self.file_done = True
        self._current = None

    def field(self, name: str) -> str | None:
        value = self.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")


async def upload(request: Request) -> JSONResponse:
    gateway = state(request)
    limit = gateway.settings.max_upload_bytes
    too_large = f"file: exceeds the upload limit of {limit} bytes"
    await refuse_declared_over(request, limit + ENVELOPE_BYTES, too_large)
    form = _Form(limit)
    directory = uploads.files_dir(gateway.settings.data_dir)
    receiver = await anyio.to_thread.run_sync(uploads.Receiver, directory, limit)
    try:
        await receive(
            request,
            form,
            "a 'file' part",
            limit=limit + ENVELOPE_BYTES,
            too_large=too_large,
            write=receiver.write,
        )
        if not form.file_seen:
            raise InvalidRequest("file: field required")
        if not form.file_done:
            raise InvalidRequest("multipart: the body ended inside the file part")
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
