"""HTTP routes for ``/v1/environments``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.bodies import parse
from gateway.api.pagination import bool_param, page_body, page_params
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
    Route("/v1/environments", create, methods=["POST"]),
    Route("/v1/environments", list_environments, methods=["GET"]),
    Route("/v1/environments/{environment_id}", retrieve, methods=["GET"]),
    Route("/v1/environments/{environment_id}", update, methods=["POST"]),
    Route("/v1/environments/{environment_id}", delete, methods=["DELETE"]),
    Route("/v1/environments/{environment_id}/archive", archive, methods=["POST"]),
]
