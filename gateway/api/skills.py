"""HTTP routes for ``/v1/skills`` and ``/v1/skills/{skill_id}/versions``.

A skill (or a new version) is uploaded as ``multipart/form-data`` with one ``files[]`` part
per file, each named by its path in the folder, as the SDK sends it. The body is parsed with
python-multipart's streaming parser (as ``api.uploads`` does for ``/v1/files``): each part's
name is admitted by ``SkillFolder`` when its headers end, before a byte of it is written, and
its bytes go to the staging folder from a worker thread; past ``MAX_TOTAL_BYTES`` the upload is
a 413. Whatever happens, the staging folder is removed unless it was kept as a version.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import BinaryIO

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from gateway.api.bodies import validate
from gateway.api.multipart import PartForm, receive, refuse_declared_over
from gateway.api.pagination import decode_cursor, limit_param, page_body
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest
from gateway.resources import skills
from gateway.resources.skill_uploads import MAX_FILES, MAX_TOTAL_BYTES, SkillFolder
from gateway.schemas.skills import (
    SOURCE_CUSTOM,
    SOURCES,
    SkillCreateFields,
    deleted_skill,
    deleted_skill_version,
)

MAX_LIST_LIMIT = 1000
FILE_FIELDS = ("files[]", "files")
MAX_FIELD_BYTES = 4096
MAX_HEADER_BYTES = 8192
PART_OVERHEAD_BYTES = 2048
BODY_LIMIT = MAX_TOTAL_BYTES + MAX_FILES * PART_OVERHEAD_BYTES + 64 * 1024
"""The file bytes plus room for each part's headers and boundary, and the text fields."""
CHUNK = 64 * 1024
TOO_LARGE = f"files: a skill's files may total at most {MAX_TOTAL_BYTES} bytes"


class _FolderForm(PartForm):
    """A file part is admitted by the folder when its headers end, its bytes counted and queued;
    the allowed text fields are kept."""

    max_header_bytes = MAX_HEADER_BYTES

    def __init__(self, folder: SkillFolder, text_fields: tuple[str, ...]) -> None:
        super().__init__()
        self.folder = folder
        self.text_fields = text_fields
        self.fields: dict[str, bytearray] = {}
        self._file = False
        self._text: bytearray | None = None

    def part_begin(self) -> None:
        self._file, self._text = False, None

    def headers_finished(self) -> None:
        _, options = self.disposition()
        name = _text(options[b"name"], "a field name")
        if name in FILE_FIELDS:
            if b"\\" in self.headers.get(b"content-disposition", b""):
                # checked raw: the parser would keep only the end of 'C:\...' names
                raise InvalidRequest("files: file names may not contain backslashes; separate with '/'")
            filename = _text(options.get(b"filename", b""), "a file name")
            content_type = self.headers.get(b"content-type", b"").decode("latin-1")
            self.pending.append(self.folder.add(filename, content_type))
            self._file = True
        elif name in self.text_fields:
            if name in self.fields:
                raise InvalidRequest(f"{name}: given more than once")
            self._text = self.fields[name] = bytearray()
        else:
            raise InvalidRequest(f"{name}: unknown field")

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file:
            self.folder.reserve(end - start)
            self.pending.append(bytes(data[start:end]))
        elif self._text is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_FIELD_BYTES:
                raise InvalidRequest("form field too long")

    def part_end(self) -> None:
        self._file, self._text = False, None

    def text(self) -> dict[str, str]:
        return {name: _text(bytes(value), name) for name, value in self.fields.items()}


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"multipart: {what} is not valid UTF-8") from None


@contextlib.asynccontextmanager
async def _uploaded(request: Request, text_fields: tuple[str, ...] = ()) -> AsyncIterator[_FolderForm]:
    """The received folder, staged; removed afterwards unless kept as a version."""
    await refuse_declared_over(request, BODY_LIMIT, TOO_LARGE)
    root = skills.skills_dir(state(request).settings.data_dir)
    folder = await anyio.to_thread.run_sync(SkillFolder, root)
    try:
        form = _FolderForm(folder, text_fields)
        await receive(
            request, form, "'files[]' parts", limit=BODY_LIMIT, too_large=TOO_LARGE, write=folder.write
        )
        yield form
    finally:
        with anyio.CancelScope(shield=True):  # a cancelled request must clean up too
            await anyio.to_thread.run_sync(folder.discard)


async def create(request: Request) -> JSONResponse:
    gateway = state(request)
    async with _uploaded(request, ("display_name",)) as form:
        fields = validate(SkillCreateFields, form.text())
        body = await skills.create(gateway.store, gateway.settings.data_dir, form.folder, fields.display_name)
    return JSONResponse(skills.render(body))


async def list_skills(request: Request) -> JSONResponse:
    source = request.query_params.get("source")
    if source is not None and source not in SOURCES:
        raise InvalidRequest(f"source: must be one of {', '.join(sorted(SOURCES))}")
    limit = limit_param(request, maximum=MAX_LIST_LIMIT)
    token = request.query_params.get("page")
    cursor = decode_cursor(token) if token else None
    if source not in (None, SOURCE_CUSTOM):  # Tether holds custom skills only
        return JSONResponse({"data": [], "next_page": None})
    page = await state(request).store.list_resources(
        skills.KIND, cursor=cursor, limit=limit, include_archived=True
    )
    return JSONResponse(page_body(page, skills.render))


async def retrieve(request: Request) -> JSONResponse:
    return JSONResponse(
        skills.render(await skills.get(state(request).store, request.path_params["skill_id"]))
    )


async def delete(request: Request) -> JSONResponse:
    gateway = state(request)
    skill_id = request.path_params["skill_id"]
    await skills.delete(gateway.store, gateway.settings.data_dir, skill_id)
    return JSONResponse(deleted_skill(skill_id))


async def create_version(request: Request) -> JSONResponse:
    gateway = state(request)
    skill_id = request.path_params["skill_id"]
    await skills.get(gateway.store, skill_id)  # before receiving a folder for nothing
    async with _uploaded(request) as form:
        document = await skills.create_version(
            gateway.store, gateway.settings.data_dir, skill_id, form.folder
        )
    return JSONResponse(skills.render_version(document))


async def list_versions(request: Request) -> JSONResponse:
    """Newest first; a record a crash left unattached to its skill is not listed."""
    gateway = state(request)
    skill = await skills.get(gateway.store, request.path_params["skill_id"])
    token = request.query_params.get("page")
    page = await gateway.store.list_resources(
        skills.VERSION_KIND,
        cursor=decode_cursor(token) if token else None,
        limit=limit_param(request, maximum=MAX_LIST_LIMIT),
        include_archived=True,
        equals={"skill_id": skill["id"]},
    )
    body = page_body(page, skills.render_version)
    body["data"] = [item for item in body["data"] if item["id"] in skill["_versions"]]
    return JSONResponse(body)


async def retrieve_version(request: Request) -> JSONResponse:
    params = request.path_params
    document = await skills.get_version(state(request).store, params["skill_id"], params["version"])
    return JSONResponse(skills.render_version(document))


async def delete_version(request: Request) -> JSONResponse:
    gateway = state(request)
    skill_id, version = request.path_params["skill_id"], request.path_params["version"]
    await skills.delete_version(gateway.store, gateway.settings.data_dir, skill_id, version)
    return JSONResponse(deleted_skill_version(version))


async def download(request: Request) -> StreamingResponse:
    """The version's files as a zip (``skills.versions.download``); by id, not ``latest``."""
    gateway = state(request)
    skill_id, version = request.path_params["skill_id"], request.path_params["version"]
    skills.check_version_id(version)
    document = await skills.get_version(gateway.store, skill_id, version)
    spool: BinaryIO = await anyio.to_thread.run_sync(tempfile.TemporaryFile)
    try:
        await anyio.to_thread.run_sync(skills.write_archive, gateway.settings.data_dir, document, spool)
        size = spool.seek(0, os.SEEK_END)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await anyio.to_thread.run_sync(spool.read, CHUNK):
                yield chunk
        finally:
            spool.close()

    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={
            "content-length": str(size),
            "content-disposition": f'attachment; filename="{document["name"]}.zip"',
        },
    )


routes = [
    endpoint("/v1/skills", post=create, get=list_skills),
    endpoint("/v1/skills/{skill_id}", get=retrieve, delete=delete),
    endpoint("/v1/skills/{skill_id}/versions", post=create_version, get=list_versions),
    endpoint("/v1/skills/{skill_id}/versions/{version}", get=retrieve_version, delete=delete_version),
    endpoint("/v1/skills/{skill_id}/versions/{version}/content", get=download),
]
