"""HTTP routes for ``/v1/sessions/{session_id}/resources`` (``client.beta.sessions.resources``)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.bodies import parse
from gateway.api.pagination import int_param
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest
from gateway.resources import common, session_resources
from gateway.schemas.session_resources import ResourceAdd, ResourceUpdate

MAX_LIST_LIMIT = 1000
MAX_CURSOR_CHARS = 128


async def add(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, ResourceAdd, gateway.settings.max_body_bytes)
    session_id = request.path_params["session_id"]
    resource = await session_resources.add(gateway.store, gateway.keyring, session_id, body)
    gateway.runner.wake(session_id)  # a running turn places it before its next tool call
    return JSONResponse(resource)


async def list_resources(request: Request) -> JSONResponse:
    limit = int_param(request, "limit", maximum=MAX_LIST_LIMIT)
    after = request.query_params.get("page")
    if after is not None and (not after or len(after) > MAX_CURSOR_CHARS):
        raise InvalidRequest("page: not a cursor of this session's resources")
    session = await common.fetch(state(request).store, session_resources.SESSION_KIND, _session_id(request))
    items, next_page = session_resources.page(session, limit, after)
    return JSONResponse({"data": items, "next_page": next_page})


async def retrieve(request: Request) -> JSONResponse:
    resource_id = request.path_params["resource_id"]
    return JSONResponse(await session_resources.get(state(request).store, _session_id(request), resource_id))


async def update(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, ResourceUpdate, gateway.settings.max_body_bytes)
    resource = await session_resources.update_token(
        gateway.store,
        gateway.keyring,
        _session_id(request),
        request.path_params["resource_id"],
        body.authorization_token,
    )
    return JSONResponse(resource)


async def delete(request: Request) -> JSONResponse:
    resource_id = request.path_params["resource_id"]
    return JSONResponse(
        await session_resources.delete(state(request).store, _session_id(request), resource_id)
    )


def _session_id(request: Request) -> str:
    session_id: str = request.path_params["session_id"]
    return session_id


routes = [
    endpoint("/v1/sessions/{session_id}/resources", post=add, get=list_resources),
    endpoint("/v1/sessions/{session_id}/resources/{resource_id}", get=retrieve, post=update, delete=delete),
]
