"""HTTP routes for ``/v1/environments``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.bodies import parse
from gateway.api.pagination import bool_param, page_body, page_params
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.resources import environments
from gateway.schemas.environments import EnvironmentCreate, EnvironmentUpdate


async def create(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, EnvironmentCreate, gateway.settings.max_body_bytes)
    return JSONResponse(await environments.create(gateway.store, body))


async def list_environments(request: Request) -> JSONResponse:
    cursor, limit = page_params(request)
    page = await state(request).store.list_resources(
        environments.KIND,
        cursor=cursor,
        limit=limit,
        include_archived=bool_param(request, "include_archived"),
    )
    return JSONResponse(page_body(page))


async def retrieve(request: Request) -> JSONResponse:
    return JSONResponse(await environments.get(state(request).store, request.path_params["environment_id"]))


async def update(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, EnvironmentUpdate, gateway.settings.max_body_bytes)
    return JSONResponse(await environments.update(gateway.store, request.path_params["environment_id"], body))


async def delete(request: Request) -> JSONResponse:
    return JSONResponse(
        await environments.delete(state(request).store, request.path_params["environment_id"])
    )


async def archive(request: Request) -> JSONResponse:
    return JSONResponse(
        await environments.archive(state(request).store, request.path_params["environment_id"])
    )


routes = [
    endpoint("/v1/environments", post=create, get=list_environments),
    endpoint("/v1/environments/{environment_id}", get=retrieve, post=update, delete=delete),
    endpoint("/v1/environments/{environment_id}/archive", post=archive),
]
