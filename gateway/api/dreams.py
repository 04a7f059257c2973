"""HTTP routes for ``/v1/dreams``: create, retrieve, list, archive and cancel.

A created dream is handed to the gateway's ``DreamRunner`` and a canceled one is reported to
it, when the gateway has one (``resources.dreams.RUNNER_ATTRIBUTE``); without one, dreams are
stored and listed but never run. ``update_existing`` writes the input memory store, so it needs
a key that may write memories there (the SDK's 403).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api import access
from gateway.api.bodies import parse
from gateway.api.pagination import bool_param, created_bounds, page_body, page_params
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.resources import dreams
from gateway.resources.dreams import DreamRunner
from gateway.schemas.dreams import STATUSES, DreamCreate

STATUS_PARAMS = ("statuses[]", "statuses")
"""``statuses[]`` is how the SDK sends a list; the bare name is accepted too."""


def _dream_id(request: Request) -> str:
    return str(request.path_params["dream_id"])


def _runner(request: Request) -> DreamRunner | None:
    runner: DreamRunner | None = getattr(state(request), dreams.RUNNER_ATTRIBUTE, None)
    return runner


def _require_store_write(request: Request, body: DreamCreate) -> None:
    if body.output_behavior.type != "update_existing":
        return
    principal = access.principal_of(request)
    if not access.allows(principal, "POST", f"/v1/memory_stores/{body.memory_store_id}/memories"):
        raise PermissionDenied(
            f"output_behavior: this API key's role ({principal.role}) may not write memory stores"
        )


async def create_dream(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, DreamCreate, gateway.settings.max_body_bytes)
    _require_store_write(request, body)
    dream = await dreams.create(gateway.store, body)
    if (runner := _runner(request)) is not None:
        await runner.start(dream)
    return JSONResponse(dream)


async def list_dreams(request: Request) -> JSONResponse:
    cursor, limit = page_params(request)
    statuses = [value for name in STATUS_PARAMS for value in request.query_params.getlist(name)]
    if unknown := sorted(set(statuses) - set(STATUSES)):
        raise InvalidRequest(f"statuses: {unknown[0]!r} is not one of {', '.join(STATUSES)}")
    page = await dreams.list_dreams(
        state(request).store,
        cursor=cursor,
        limit=limit,
        include_archived=bool_param(request, "include_archived"),
        created=created_bounds(request),
        statuses=statuses,
    )
    return JSONResponse(page_body(page))


async def retrieve_dream(request: Request) -> JSONResponse:
    dream = await dreams.get(state(request).store, _dream_id(request))
    if (runner := _runner(request)) is not None:
        dream = await runner.refresh(dream)  # the session's latest progress, not the last sweep's
    return JSONResponse(dream)


async def archive_dream(request: Request) -> JSONResponse:
    return JSONResponse(await dreams.archive(state(request).store, _dream_id(request)))


async def cancel_dream(request: Request) -> JSONResponse:
    dream = await dreams.cancel(state(request).store, _dream_id(request))
    if (runner := _runner(request)) is not None:
        await runner.cancel(dream)
    return JSONResponse(dream)


DREAM = "/v1/dreams/{dream_id}"
routes = [
    endpoint("/v1/dreams", post=create_dream, get=list_dreams),
    endpoint(DREAM, get=retrieve_dream),
    endpoint(DREAM + "/archive", post=archive_dream),
    endpoint(DREAM + "/cancel", post=cancel_dream),
]
