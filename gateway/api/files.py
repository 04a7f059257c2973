"""HTTP routes for ``/v1/files``: uploads (``api.uploads``) and session outputs.

Listed by ``scope_id`` (or ``session_id``), a session's outputs, oldest first, reconciled with
its outputs folder; without it, every file newest first, uploads and outputs alike.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from gateway.api.pagination import decode_cursor, encode_cursor, limit_param, page_body
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.api.uploads import upload
from gateway.errors import InvalidRequest
from gateway.resources import files, sessions, uploads

CHUNK = 64 * 1024
MAX_IDS = 100


async def list_files(request: Request) -> JSONResponse:
    gateway = state(request)
    scope = request.query_params.get("scope_id") or request.query_params.get("session_id")
    limit = limit_param(request, default=20, maximum=1000)
    token = request.query_params.get("page")
    start = decode_cursor(token) if token else None
    ids = list(dict.fromkeys(request.query_params.getlist("ids[]") + request.query_params.getlist("ids")))
    if ids and (token or request.query_params.get("limit")):
        raise InvalidRequest("ids: cannot be combined with page or limit")
    if len(ids) > MAX_IDS:
        raise InvalidRequest(f"ids: at most {MAX_IDS}")
    if not scope:
        page = await gateway.store.list_resources(
            files.KIND,
            cursor=None if ids else start,
            limit=len(ids) if ids else limit,
            include_archived=True,
            one_of={"id": ids} if ids else None,
        )
        return JSONResponse({**page_body(page, files.render), **({"next_page": None} if ids else {})})
    await sessions.get(gateway.store, scope)
    records = await files.sync_session(gateway.store, gateway.settings.workspaces_dir, scope)
    if ids:
        wanted = set(ids)
        return JSONResponse(
            {"data": [files.render(r) for r in records if r["id"] in wanted], "next_page": None}
        )
    offset = start or 0
    window = records[offset : offset + limit]
    more = offset + limit < len(records)
    return JSONResponse(
        {
            "data": [files.render(r) for r in window],
            "next_page": encode_cursor(offset + limit) if more else None,
        }
    )


async def retrieve(request: Request) -> JSONResponse:
    return JSONResponse(files.render(await files.get(state(request).store, request.path_params["file_id"])))


async def download(request: Request) -> StreamingResponse:
    gateway = state(request)
    body = await files.get(gateway.store, request.path_params["file_id"])
    fd, size = await anyio.to_thread.run_sync(files.open_content, gateway.settings.workspaces_dir, body)

    async def chunks() -> AsyncIterator[bytes]:
        try:
            while chunk := await anyio.to_thread.run_sync(os.read, fd, CHUNK):
                yield chunk
        finally:
            os.close(fd)

    filename = body["filename"].replace('"', "")
    return StreamingResponse(
        chunks(),
        media_type=body["mime_type"],
        headers={"content-length": str(size), "content-disposition": f'attachment; filename="{filename}"'},
    )


async def delete(request: Request) -> JSONResponse:
    gateway = state(request)
    return JSONResponse(
        await files.delete(
            gateway.store,
            gateway.settings.workspaces_dir,
            uploads.files_dir(gateway.settings.data_dir),
            request.path_params["file_id"],
        )
    )


routes = [
    endpoint("/v1/files", get=list_files, post=upload),
    endpoint("/v1/files/{file_id}", get=retrieve, delete=delete),
    endpoint("/v1/files/{file_id}/content", get=download),
]
