"""HTTP routes for ``/v1/environments/{id}/work``: the queue self-hosted workers drain."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.bodies import parse
from gateway.api.pagination import int_param, page_body, page_params
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest
from gateway.resources import environments, work
from gateway.resources.common import public
from gateway.schemas.common import MetadataPatch, Strict


class Stop(Strict):
    force: bool | None = None


class WorkUpdate(Strict):
    metadata: MetadataPatch | None = None


async def _environment(request: Request) -> str:
    environment = await environments.get(state(request).store, request.path_params["environment_id"])
    return str(environment["id"])


async def list_work(request: Request) -> JSONResponse:
    environment_id = await _environment(request)
    cursor, limit = page_params(request)
    page = await state(request).store.list_resources(
        work.KIND,
        cursor=cursor,
        limit=limit,
        include_archived=True,
        equals={"environment_id": environment_id},
    )
    return JSONResponse(page_body(page, public))


async def poll(request: Request) -> JSONResponse:
    environment_id = await _environment(request)
    item = await work.poll(
        state(request).store,
        environment_id,
        int_param(request, "block_ms", maximum=999),
        int_param(request, "reclaim_older_than_ms", minimum=0, maximum=3_600_000),
        request.headers.get("anthropic-worker-id"),
    )
    return JSONResponse(public(item) if item else None)


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(await work.stats(state(request).store, await _environment(request)))


async def retrieve(request: Request) -> JSONResponse:
    environment_id = await _environment(request)
    return JSONResponse(
        public(await work.get(state(request).store, environment_id, request.path_params["work_id"]))
    )


async def update(request: Request) -> JSONResponse:
    environment_id = await _environment(request)
    gateway = state(request)
    body = await parse(request, WorkUpdate, gateway.settings.max_body_bytes)
    updated = await work.update_metadata(
        gateway.store, environment_id, request.path_params["work_id"], body.metadata or {}
    )
    return JSONResponse(public(updated))


async def ack(request: Request) -> JSONResponse:
    environment_id = await _environment(request)
    return JSONResponse(
        public(await work.ack(state(request).store, environment_id, request.path_params["work_id"]))
    )


async def heartbeat(request: Request) -> JSONResponse:
    """The SDK sends ``expected_last_heartbeat`` and ``desired_ttl_seconds`` as query parameters."""
    environment_id = await _environment(request)
    expected = request.query_params.get("expected_last_heartbeat")
    if not expected:
        raise InvalidRequest("expected_last_heartbeat: required ('NO_HEARTBEAT' for the first heartbeat)")
    return JSONResponse(
        await work.heartbeat(
            state(request).store,
            environment_id,
            request.path_params["work_id"],
            expected,
            int_param(request, "desired_ttl_seconds", maximum=work.MAX_TTL),
        )
    )


async def stop(request: Request) -> JSONResponse:
    environment_id = await _environment(request)
    gateway = state(request)
    body = await parse(request, Stop, gateway.settings.max_body_bytes)
    stopped = await work.stop(gateway.store, environment_id, request.path_params["work_id"], bool(body.force))
    return JSONResponse(public(stopped))


PREFIX = "/v1/environments/{environment_id}/work"
routes = [
    endpoint(PREFIX, get=list_work),
    endpoint(PREFIX + "/poll", get=poll),
    endpoint(PREFIX + "/stats", get=stats),
    endpoint(PREFIX + "/{work_id}", get=retrieve, post=update),
    endpoint(PREFIX + "/{work_id}/ack", post=ack),
    endpoint(PREFIX + "/{work_id}/heartbeat", post=heartbeat),
    endpoint(PREFIX + "/{work_id}/stop", post=stop),
]
