"""Files clients upload to ``/v1/files``: the bytes under ``DATA_DIR/files``, a record in the store.

An upload is streamed into a temporary file in that directory while its SHA-256 and type are
computed (``Receiver``), then renamed to its id, so a half-received upload is never a file,
and nothing the client names reaches the path: the file is ``files/<file_id>``, the client's
filename is only a label (its last path component). Records share the ``file`` collection with
session outputs (``resources.files``); an upload is told apart by its internal ``_upload``
field (its digest, the declared type and the sniffed one) and by having no ``scope``.

As the API documents, uploaded files are not downloadable (only files a session wrote are);
they are inputs, used as ``file`` sources in messages: ``require_usable`` checks a message's
references when it is sent, and ``load`` reads the bytes for the model request.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import anyio.to_thread

from gateway import ids
from gateway.errors import InvalidRequest, RequestTooLarge
from gateway.resources import content_types
from gateway.store.base import Body, Store

KIND = "file"
"""The collection session outputs use too (``resources.files.KIND``)."""
UPLOAD = "_upload"
MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 7_776_000
MAX_FILENAME_CHARS = 255
_ID = re.compile(r"^file_[A-Za-z0-9]{1,64}$", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def files_dir(data_dir: Path) -> Path:
    return data_dir / "files"


def is_upload(body: Body) -> bool:
    return UPLOAD in body


def _path(directory: Path, file_id: str) -> Path:
    if not _ID.match(file_id):  # ids are ours, but a path is built from this one
        raise ValueError(f"not a file id: {file_id!r}")
    return directory / file_id


@dataclass(frozen=True)
class Received:
    size: int
    sha256: str
    sniffed_type: str


class Receiver:
    """One upload being written to disk. Blocking: call it from a worker thread."""

    def __init__(self, directory: Path, limit: int) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory = directory
        self.limit = limit
        self.size = 0
        fd, name = tempfile.mkstemp(dir=directory, prefix=".upload-", suffix=".part")
        self._fd: int | None = fd
        self._temp = Path(name)
        self._hash = hashlib.sha256()
        self._sniffer = content_types.Sniffer()

    def write(self, chunks: Iterable[bytes]) -> None:
        assert self._fd is not None
        for chunk in chunks:
            if self.size + len(chunk) > self.limit:
                raise RequestTooLarge(f"file: exceeds the upload limit of {self.limit} bytes")
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view) :]
            self.size += len(chunk)
            self._hash.update(chunk)
            self._sniffer.feed(chunk)

    def keep(self, file_id: str) -> Received:
        """Make the bytes durable and give them their final name."""
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        os.rename(self._temp, _path(self.directory, file_id))
        return Received(self.size, self._hash.hexdigest(), self._sniffer.result())

    def discard(self) -> None:
        """Remove the partial file (after a failure, or once kept: then a no-op)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()


PARTIAL_GLOB = ".upload-*.part"
STALE_PARTIAL_SECONDS = 3600.0
"""A partial upload this old belongs to no live request (a gateway was killed mid-upload); a
younger one may be a replica's upload in progress on a shared data directory."""


def remove_stale_partials(directory: Path, now: float | None = None) -> int:
    """Remove what killed gateways left half-written; returns how many. Blocking."""
    cutoff = (time.time() if now is None else now) - STALE_PARTIAL_SECONDS
    removed = 0
    for partial in directory.glob(PARTIAL_GLOB) if directory.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if partial.lstat().st_mtime < cutoff:
                partial.unlink()
                removed += 1
    return removed


def filename_label(raw: str | None, mime_type: str) -> str:
    """The part's filename as the API keeps it: only its final path component (``/`` or ``\\``),
    without control characters; empty becomes ``unnamed`` plus the type's extension."""
    name = _CONTROL.sub("", re.split(r"[/\\]", raw or "")[-1]).strip()
    if name in ("", ".", ".."):
        return "unnamed" + content_types.EXTENSIONS.get(mime_type, "")
    return name[:MAX_FILENAME_CHARS]


def expiry(seconds: str | None) -> int | None:
    """``expires_in_seconds`` from its form field, checked against the documented range."""
    if seconds is None:
        return None
    if not seconds.isascii() or not seconds.strip().isdigit():
        raise InvalidRequest("expires_in_seconds: must be an integer")
    value = int(seconds)
    if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
        raise InvalidRequest(
            f"expires_in_seconds: must be between {MIN_EXPIRY_SECONDS} and {MAX_EXPIRY_SECONDS}"
        )
    return value


async def create(
    store: Store,
    receiver: Receiver,
    *,
    filename: str | None,
    declared_type: str | None,
    expires_in_seconds: int | None = None,
) -> Body:
    """Keep the received bytes under a new id and record them; on any failure nothing is left."""
    file_id = ids.new_id(ids.FILE)
    received = await anyio.to_thread.run_sync(receiver.keep, file_id)
    created = ids.now()
    mime_type = content_types.recorded(declared_type, received.sniffed_type)
    body: Body = {
        "type": "file",
        "id": file_id,
        "filename": filename_label(filename, mime_type),
        "mime_type": mime_type,
        "size_bytes": received.size,
        "created_at": ids.timestamp(created),
        "downloadable": False,
        UPLOAD: {
            "sha256": received.sha256,
            "declared_type": declared_type,
            "sniffed_type": received.sniffed_type,
        },
    }
    if expires_in_seconds is not None:
        body["expires_at"] = ids.timestamp(created + timedelta(seconds=expires_in_seconds))
    try:
        await store.insert(KIND, body)
    except BaseException:
        _unlink(receiver.directory, file_id)  # not awaited: a cancelled request must clean up too
        raise
    return body


def _unlink(directory: Path, file_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _path(directory, file_id).unlink()


async def delete(store: Store, directory: Path, body: Body) -> None:
    """The record first: once it is gone no message can name the file, then the bytes."""
    await store.delete(KIND, body["id"])
    await anyio.to_thread.run_sync(_unlink, directory, body["id"])


EXPIRY_SWEEP_SECONDS = 600.0
EXPIRY_SWEEP_BATCH = 500


async def remove_expired(store: Store, directory: Path) -> int:
    """Delete uploads past their ``expires_at``, record and bytes; returns how many. An expired
    file is already refused in messages: this gives its disk space back."""
    page = await store.list_resources(
        KIND,
        cursor=None,
        limit=EXPIRY_SWEEP_BATCH,
        include_archived=True,
        not_null=("expires_at",),
        order="asc",
    )
    expired = [body for body in page.items if is_upload(body) and _expired(body)]
    for body in expired:
        await delete(store, directory, body)
    return len(expired)


async def expire_forever(store: Store, directory: Path, interval: float = EXPIRY_SWEEP_SECONDS) -> None:
    while True:
        await remove_expired(store, directory)
        await anyio.sleep(interval)


def _expired(body: Body) -> bool:
    expires_at = body.get("expires_at")
    return expires_at is not None and str(expires_at) <= ids.timestamp()


_BLOCK_TYPES = {"image": content_types.IMAGE_TYPES, "document": content_types.DOCUMENT_TYPES}


def _unusable(body: Body | None, file_id: str, block_type: str) -> str | None:
    """Why a content block of ``block_type`` cannot name this file, or None when it can."""
    if body is None:
        return f"file {file_id!r} not found"
    if not is_upload(body):
        return f"file {file_id!r} is a session output, not an uploaded file; upload it to use it here"
    if _expired(body):
        return f"file {file_id!r} has expired"
    sniffed = body[UPLOAD]["sniffed_type"]
    allowed = _BLOCK_TYPES[block_type]
    if sniffed not in allowed:
        return f"file {file_id!r} is {sniffed}; a {block_type} block takes {', '.join(sorted(allowed))}"
    return None


async def require_usable(store: Store, references: Iterable[tuple[str, str]]) -> None:
    """Each ``(block_type, file_id)`` must name an uploaded file of a type that block can carry:
    otherwise a 400 naming the file, before anything is written to the session's log."""
    for block_type, file_id in dict.fromkeys(references):  # one read per file, however often named
        body = await store.get(KIND, file_id)
        problem = _unusable(body, file_id, block_type)
        if problem is not None:
            raise InvalidRequest(problem)


@dataclass(frozen=True)
class Loaded:
    media_type: str
    """The sniffed type: what the bytes are, whatever was declared."""
    data: bytes


class Unavailable(Exception):
    """A file named in the log can no longer be sent (deleted, expired, too large)."""


async def load(store: Store, directory: Path, file_id: str, block_type: str, max_bytes: int) -> Loaded:
    """The bytes of an uploaded file for a model request; ``Unavailable`` says why not."""
    body = await store.get(KIND, file_id)
    problem = _unusable(body, file_id, block_type)
    if problem is not None:
        raise Unavailable(problem)
    assert body is not None
    if body["size_bytes"] > max_bytes:
        raise Unavailable(f"file {file_id!r} is larger than the {max_bytes} bytes a model request may carry")
    try:
        data = await anyio.Path(_path(directory, file_id)).read_bytes()
    except OSError:
        raise Unavailable(f"file {file_id!r}: its content is missing") from None
    return Loaded(body[UPLOAD]["sniffed_type"], data)
