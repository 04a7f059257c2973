"""HTTP routes for ``/v1/tether/webhooks``: register, list, retrieve and delete endpoints.

Creating one returns its signing ``secret`` once; nothing returns it again (delete and
re-create the endpoint to rotate it).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.bodies import parse
from gateway.api.pagination import page_body, page_params
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.webhooks import endpoints, targets
from gateway.webhooks.endpoints import WebhookCreate


async def create(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, WebhookCreate, gateway.settings.max_body_bytes)
    allowed = targets.allowing(tuple(gateway.settings.webhook_allowed_hosts))
    created = await endpoints.create(gateway.store, body, allowed)
    return JSONResponse({**endpoints.render(created), "secret": created["secret"]})


async def list_endpoints(request: Request) -> JSONResponse:
    cursor, limit = page_params(request)
    page = await endpoints.list_page(state(request).store, cursor, limit)
    return JSONResponse(page_body(page, endpoints.render))


async def retrieve(request: Request) -> JSONResponse:
    body = await endpoints.get(state(request).store, request.path_params["webhook_id"])
    return JSONResponse(endpoints.render(body))


async def delete(request: Request) -> JSONResponse:
    webhook_id = request.path_params["webhook_id"]
    await endpoints.delete(state(request).store, webhook_id)
    return JSONResponse({"id": webhook_id, "type": "webhook_endpoint_deleted"})


routes = [
    endpoint("/v1/tether/webhooks", post=create, get=list_endpoints),
    endpoint("/v1/tether/webhooks/{webhook_id}", get=retrieve, delete=delete),
]
