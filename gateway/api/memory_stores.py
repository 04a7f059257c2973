"""HTTP routes for ``/v1/memory_stores``, its ``/memories`` and its ``/memory_versions``.

Every write is recorded with its author: the API key that made the request (``api_actor``), or
none for a key configured in the environment, which has no id. Memories are listed by path with
a cursor that is the last path returned, so a page never repeats or skips a memory that was
there throughout; versions are listed newest first.
"""

from __future__ import annotations

import base64
import binascii

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api import access
from gateway.api.bodies import parse
from gateway.api.pagination import (
    bool_param,
    created_bounds,
    decode_cursor,
    encode_cursor,
    int_param,
    limit_param,
    page_body,
    page_params,
)
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest
from gateway.resources import common, memories, memory_stores
from gateway.schemas.memory_stores import (
    MAX_SEGMENTS,
    OPERATIONS,
    VIEWS,
    MemoryCreate,
    MemoryStoreCreate,
    MemoryStoreUpdate,
    MemoryUpdate,
    api_actor,
    deleted_memory,
    deleted_memory_store,
    path_problem,
    sha256_problem,
    version_view,
)
from gateway.store.base import Body

FULL_VIEW_LIMIT = 20
"""With ``view=full`` a page holds at most this many items (the SDK's documented cap)."""
_PATH_CURSOR = "page_p"
_VERSION_FILTERS = {
    "memory_id": "memory_id",
    "api_key_id": "created_by.api_key_id",
    "session_id": "created_by.session_id",
    "service_account_id": "created_by.service_account_id",
}
"""Query parameters of ``memory_versions.list`` and the version field each must equal."""


def _store_id(request: Request) -> str:
    return str(request.path_params["memory_store_id"])


def _actor(request: Request) -> Body | None:
    return api_actor(access.principal_of(request).key_id)


def _view(request: Request, default: str) -> str:
    view = request.query_params.get("view", default)
    if view not in VIEWS:
        raise InvalidRequest(f"view: must be one of {', '.join(VIEWS)}, not {view!r}")
    return view


def _limit(request: Request, view: str) -> int:
    limit = limit_param(request)
    return min(limit, FULL_VIEW_LIMIT) if view == "full" else limit


def _encode_path_cursor(path: str) -> str:
    return _PATH_CURSOR + base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def _decode_path_cursor(token: str) -> str:
    raw = token.removeprefix(_PATH_CURSOR)
    try:
        path = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, ValueError):
        path = ""
    if not token.startswith(_PATH_CURSOR) or not path.startswith("/"):
        raise InvalidRequest("page: not a cursor returned by this API")
    return path


# Stores ------------------------------------------------------------------------------------


async def create_store(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, MemoryStoreCreate, gateway.settings.max_body_bytes)
    return JSONResponse(await memory_stores.create(gateway.store, body))


async def list_stores(request: Request) -> JSONResponse:
    cursor, limit = page_params(request)
    page = await memory_stores.list_stores(
        state(request).store,
        cursor=cursor,
        limit=limit,
        include_archived=bool_param(request, "include_archived"),
        created=created_bounds(request),
    )
    return JSONResponse(page_body(page, common.public))


async def retrieve_store(request: Request) -> JSONResponse:
    return JSONResponse(await memory_stores.get(state(request).store, _store_id(request)))


async def update_store(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, MemoryStoreUpdate, gateway.settings.max_body_bytes)
    return JSONResponse(await memory_stores.update(gateway.store, _store_id(request), body))


async def delete_store(request: Request) -> JSONResponse:
    store_id = _store_id(request)
    await memory_stores.delete(state(request).store, store_id)
    return JSONResponse(deleted_memory_store(store_id))


async def archive_store(request: Request) -> JSONResponse:
    return JSONResponse(await memory_stores.archive(state(request).store, _store_id(request)))


# Memories ----------------------------------------------------------------------------------


async def create_memory(request: Request) -> JSONResponse:
    gateway = state(request)
    view = _view(request, "basic")
    body = await parse(request, MemoryCreate, gateway.settings.max_body_bytes)
    memory = await memories.create(
        gateway.store, _store_id(request), body.path, body.content, _actor(request), view
    )
    return JSONResponse(memory)


async def list_memories(request: Request) -> JSONResponse:
    view = _view(request, "basic")
    prefix = request.query_params.get("path_prefix", "/")
    problem = path_problem(prefix, prefix=True)
    if problem is not None:
        raise InvalidRequest(f"path_prefix: {prefix!r} {problem}")
    token = request.query_params.get("page")
    items, more = await memories.listing(
        state(request).store,
        _store_id(request),
        prefix=prefix,
        depth=int_param(request, "depth", minimum=0, maximum=MAX_SEGMENTS) or 0,
        after=_decode_path_cursor(token) if token else None,
        limit=_limit(request, view),
        view=view,
    )
    next_page = _encode_path_cursor(items[-1]["path"]) if more and items else None
    return JSONResponse({"data": items, "next_page": next_page})


async def retrieve_memory(request: Request) -> JSONResponse:
    memory_id = request.path_params["memory_id"]
    memory = await memories.retrieve(
        state(request).store, _store_id(request), memory_id, _view(request, "full")
    )
    return JSONResponse(memory)


async def update_memory(request: Request) -> JSONResponse:
    gateway = state(request)
    view = _view(request, "basic")
    body = await parse(request, MemoryUpdate, gateway.settings.max_body_bytes)
    memory = await memories.update(
        gateway.store,
        _store_id(request),
        request.path_params["memory_id"],
        content=body.content,
        path=body.path,
        expected_sha256=body.precondition.content_sha256 if body.precondition else None,
        actor=_actor(request),
        view=view,
    )
    return JSONResponse(memory)


async def delete_memory(request: Request) -> JSONResponse:
    memory_id = request.path_params["memory_id"]
    expected = request.query_params.get("expected_content_sha256")
    problem = sha256_problem(expected) if expected is not None else None
    if problem is not None:
        raise InvalidRequest(f"expected_content_sha256: {problem}")
    await memories.delete(
        state(request).store, _store_id(request), memory_id, expected_sha256=expected, actor=_actor(request)
    )
    return JSONResponse(deleted_memory(memory_id))


# Versions ----------------------------------------------------------------------------------


async def list_versions(request: Request) -> JSONResponse:
    view = _view(request, "basic")
    equals: dict[str, object] = {
        field: value for name, field in _VERSION_FILTERS.items() if (value := request.query_params.get(name))
    }
    operation = request.query_params.get("operation")
    if operation is not None:
        if operation not in OPERATIONS:
            raise InvalidRequest(f"operation: must be one of {', '.join(OPERATIONS)}, not {operation!r}")
        equals["operation"] = operation
    token = request.query_params.get("page")
    page = await memory_stores.list_versions(
        state(request).store,
        _store_id(request),
        cursor=decode_cursor(token) if token else None,
        limit=_limit(request, view),
        equals=equals,
        created=created_bounds(request),
    )
    return JSONResponse(
        {
            "data": [version_view(item, view) for item in page.items],
            "next_page": encode_cursor(page.next_cursor) if page.next_cursor is not None else None,
        }
    )


async def retrieve_version(request: Request) -> JSONResponse:
    version_id = request.path_params["memory_version_id"]
    version = await memory_stores.get_version(state(request).store, _store_id(request), version_id)
    return JSONResponse(version_view(version, _view(request, "full")))


async def redact_version(request: Request) -> JSONResponse:
    version_id = request.path_params["memory_version_id"]
    version = await memory_stores.redact(
        state(request).store, _store_id(request), version_id, _actor(request)
    )
    return JSONResponse(version)


STORE = "/v1/memory_stores/{memory_store_id}"
routes = [
    endpoint("/v1/memory_stores", post=create_store, get=list_stores),
    endpoint(STORE, get=retrieve_store, post=update_store, delete=delete_store),
    endpoint(STORE + "/archive", post=archive_store),
    endpoint(STORE + "/memories", post=create_memory, get=list_memories),
    endpoint(STORE + "/memories/{memory_id}", get=retrieve_memory, post=update_memory, delete=delete_memory),
    endpoint(STORE + "/memory_versions", get=list_versions),
    endpoint(STORE + "/memory_versions/{memory_version_id}", get=retrieve_version),
    endpoint(STORE + "/memory_versions/{memory_version_id}/redact", post=redact_version),
]
