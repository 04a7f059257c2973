"""HTTP routes for ``/v1/deployments`` and ``/v1/deployment_runs``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api import access
from gateway.api.bodies import parse
from gateway.api.pagination import (
    bool_param,
    created_bounds,
    decode_cursor,
    limit_param,
    page_body,
    page_params,
    time_param,
)
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest
from gateway.resources import deployment_runs, deployments, uploads
from gateway.schemas.deployments import DeploymentCreate, DeploymentUpdate
from gateway.schemas.sessions import AgentReference, file_references
from gateway.store.base import Body

STATUSES = ("active", "paused")
TRIGGER_TYPES = ("manual", "schedule")
MAX_RUNS_PAGE = 1000


def _agent_id(agent: str | AgentReference) -> str:
    return agent if isinstance(agent, str) else agent.id


async def create(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, DeploymentCreate, gateway.settings.max_body_bytes)
    access.require_agent(request, _agent_id(body.agent))
    access.require_vault_use(request, body.vault_ids)
    await uploads.require_usable(gateway.store, file_references(body.initial_events))
    return JSONResponse(
        deployments.render(await deployments.create(gateway.store, body, gateway.settings.prices))
    )


async def list_deployments(request: Request) -> JSONResponse:
    cursor, limit = page_params(request)
    include_archived = bool_param(request, "include_archived")
    equals: dict[str, object] = {}
    if (status := request.query_params.get("status")) is not None:
        if status not in STATUSES:
            raise InvalidRequest(f"status: must be one of {', '.join(STATUSES)}")
        if include_archived:
            raise InvalidRequest("status and include_archived cannot be combined")
        equals["status"] = status
    if agent_id := request.query_params.get("agent_id"):
        equals["agent.id"] = agent_id
    page = await state(request).store.list_resources(
        deployments.KIND,
        cursor=cursor,
        limit=limit,
        include_archived=include_archived,
        equals=equals,
        created_gte=time_param(request, "created_at[gte]"),
        created_lte=time_param(request, "created_at[lte]"),
    )
    return JSONResponse(page_body(page, deployments.render))


async def retrieve(request: Request) -> JSONResponse:
    body = await deployments.get(state(request).store, request.path_params["deployment_id"])
    return JSONResponse(deployments.render(body))


async def update(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, DeploymentUpdate, gateway.settings.max_body_bytes)
    deployment_id = request.path_params["deployment_id"]
    current = await _controlled(request, deployment_id)
    if body.agent is not None:
        access.require_agent(request, _agent_id(body.agent))
    # Changing a deployment that will fire with vaults lends them to what it fires: admin only.
    keeps = body.vault_ids if "vault_ids" in body.model_fields_set else current["vault_ids"]
    access.require_vault_use(request, keeps)
    await uploads.require_usable(gateway.store, file_references(body.initial_events or []))
    updated = await deployments.update(gateway.store, deployment_id, body, gateway.settings.prices)
    return JSONResponse(deployments.render(updated))


async def _controlled(request: Request, deployment_id: str) -> Body:
    """The deployment, if the caller's key may act on its agent (a key limited to some agents
    acts on their deployments only)."""
    current = await deployments.get(state(request).store, deployment_id)
    access.require_agent(request, current["agent"]["id"])
    return current


async def archive(request: Request) -> JSONResponse:
    deployment_id = request.path_params["deployment_id"]
    await _controlled(request, deployment_id)
    body = await deployments.archive(state(request).store, deployment_id)
    return JSONResponse(deployments.render(body))


async def pause(request: Request) -> JSONResponse:
    deployment_id = request.path_params["deployment_id"]
    await _controlled(request, deployment_id)
    body = await deployments.pause(state(request).store, deployment_id)
    return JSONResponse(deployments.render(body))


async def unpause(request: Request) -> JSONResponse:
    """Resuming fires lends the deployment's vaults again: as for ``run``, admin only if it has any."""
    deployment_id = request.path_params["deployment_id"]
    current = await _controlled(request, deployment_id)
    access.require_vault_use(request, current["vault_ids"])
    body = await deployments.unpause(state(request).store, deployment_id)
    return JSONResponse(deployments.render(body))


async def run(request: Request) -> JSONResponse:
    """A manual fire: allowed while paused; a failed one is recorded and pauses nothing."""
    gateway = state(request)
    deployment = await deployments.get(gateway.store, request.path_params["deployment_id"])
    access.require_agent(request, deployment["agent"]["id"])
    if deployment.get("archived_at"):
        raise InvalidRequest(f"deployment {deployment['id']} is archived")
    access.require_vault_use(request, deployment["vault_ids"])
    record = await deployment_runs.fire(
        gateway.store, deployment, {"type": "manual"}, prices=gateway.settings.prices
    )
    if record["session_id"] is not None:
        gateway.runner.wake(record["session_id"])
    return JSONResponse(record)


async def list_runs(request: Request) -> JSONResponse:
    token = request.query_params.get("page")
    cursor = decode_cursor(token) if token else None
    limit = limit_param(request, maximum=MAX_RUNS_PAGE)
    equals: dict[str, object] = {}
    not_null: list[str] = []
    if deployment_id := request.query_params.get("deployment_id"):
        equals["deployment_id"] = deployment_id
    if (trigger := request.query_params.get("trigger_type")) is not None:
        if trigger not in TRIGGER_TYPES:
            raise InvalidRequest(f"trigger_type: must be one of {', '.join(TRIGGER_TYPES)}")
        equals["trigger_context.type"] = trigger
    if request.query_params.get("has_error") is not None:
        not_null.append("error" if bool_param(request, "has_error") else "session_id")
    created_gte, created_lte = created_bounds(request)
    page = await state(request).store.list_resources(
        deployment_runs.KIND,
        cursor=cursor,
        limit=limit,
        include_archived=True,
        equals=equals,
        not_null=not_null,
        created_gte=created_gte,
        created_lte=created_lte,
    )
    return JSONResponse(page_body(page))


async def retrieve_run(request: Request) -> JSONResponse:
    return JSONResponse(await deployment_runs.get(state(request).store, request.path_params["run_id"]))


routes = [
    endpoint("/v1/deployments", post=create, get=list_deployments),
    endpoint("/v1/deployments/{deployment_id}", get=retrieve, post=update),
    endpoint("/v1/deployments/{deployment_id}/archive", post=archive),
    endpoint("/v1/deployments/{deployment_id}/pause", post=pause),
    endpoint("/v1/deployments/{deployment_id}/unpause", post=unpause),
    endpoint("/v1/deployments/{deployment_id}/run", post=run),
    endpoint("/v1/deployment_runs", get=list_runs),
    endpoint("/v1/deployment_runs/{run_id}", get=retrieve_run),
]
