"""HTTP routes for ``/v1/agents``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.bodies import parse
from gateway.api.pagination import bool_param, int_param, page_body, page_params, time_param
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.resources import agents
from gateway.schemas.agents import AgentCreate, AgentUpdate


async def create(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, AgentCreate, gateway.settings.max_body_bytes)
    return JSONResponse(await agents.create(gateway.store, body))


async def list_agents(request: Request) -> JSONResponse:
    cursor, limit = page_params(request)
    page = await state(request).store.list_resources(
        agents.KIND,
        cursor=cursor,
        limit=limit,
        include_archived=bool_param(request, "include_archived"),
        created_gte=time_param(request, "created_at[gte]"),
        created_lte=time_param(request, "created_at[lte]"),
    )
    return JSONResponse(page_body(page))


async def retrieve(request: Request) -> JSONResponse:
    version = int_param(request, "version")
    return JSONResponse(await agents.get(state(request).store, request.path_params["agent_id"], version))


async def update(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, AgentUpdate, gateway.settings.max_body_bytes)
    return JSONResponse(await agents.update(gateway.store, request.path_params["agent_id"], body))


async def archive(request: Request) -> JSONResponse:
    return JSONResponse(await agents.archive(state(request).store, request.path_params["agent_id"]))


async def list_versions(request: Request) -> JSONResponse:
    store = state(request).store
    agent_id = request.path_params["agent_id"]
    await agents.get(store, agent_id)
    cursor, limit = page_params(request)
    return JSONResponse(page_body(await store.list_agent_versions(agent_id, cursor=cursor, limit=limit)))


routes = [
    endpoint("/v1/agents", post=create, get=list_agents),
    endpoint("/v1/agents/{agent_id}", get=retrieve, post=update),
    endpoint("/v1/agents/{agent_id}/archive", post=archive),
    endpoint("/v1/agents/{agent_id}/versions", get=list_versions),
]
