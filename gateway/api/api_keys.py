"""HTTP routes for API keys, on the SDK's ``/v1/organizations/api_keys`` paths.

The SDK can list, retrieve and update (rename, deactivate, archive) keys; creating one is
Tether's addition on the same path (``POST``), returning the token once in ``key``.
``/v1/tether/whoami`` tells any key what it may do (the tunnel agent refuses an admin key).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api import access
from gateway.api.bodies import parse
from gateway.api.pagination import int_param
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest
from gateway.resources import api_keys
from gateway.resources.api_keys import KeyCreate, KeyUpdate

PATH = "/v1/organizations/api_keys"
LISTED = 1000


async def create(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, KeyCreate, gateway.settings.max_body_bytes)
    created, token = await api_keys.create(gateway.store, body)
    return JSONResponse({**api_keys.render(created), "key": token})


async def list_keys(request: Request) -> JSONResponse:
    """The SDK's ``SyncPage``: ``after_id``/``before_id`` cursors over newest-first keys."""
    params = request.query_params
    limit = int_param(request, "limit", maximum=1000) or 20
    status = params.get("status")
    if status is not None and status not in ("active", "archived", "expired", "inactive"):
        raise InvalidRequest("status: must be one of active, archived, expired, inactive")
    page = await api_keys.list_page(state(request).store, None, LISTED, None)
    keys = [api_keys.render(body) for body in page.items]
    if status is not None:
        keys = [key for key in keys if key["status"] == status]
    shown, more = _window(keys, params.get("after_id"), params.get("before_id"), limit)
    return JSONResponse(_page(shown, more))


def _window(
    keys: list[dict[str, Any]], after: str | None, before: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """``limit`` keys after ``after`` or just before ``before``, and whether more lie beyond."""
    ids = [key["id"] for key in keys]
    for name, cursor in (("after_id", after), ("before_id", before)):
        if cursor is not None and cursor not in ids:
            raise InvalidRequest(f"{name}: no key {cursor}")
    if before is not None:
        end = ids.index(before)
        return keys[max(0, end - limit) : end], end > limit
    start = ids.index(after) + 1 if after is not None else 0
    return keys[start : start + limit], len(keys) > start + limit


def _page(keys: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "data": keys,
        "has_more": has_more,
        "first_id": keys[0]["id"] if keys else None,
        "last_id": keys[-1]["id"] if keys else None,
    }


async def retrieve(request: Request) -> JSONResponse:
    body = await api_keys.get(state(request).store, request.path_params["api_key_id"])
    return JSONResponse(api_keys.render(body))


async def update(request: Request) -> JSONResponse:
    gateway = state(request)
    change = await parse(request, KeyUpdate, gateway.settings.max_body_bytes)
    body = await api_keys.update(gateway.store, request.path_params["api_key_id"], change)
    return JSONResponse(api_keys.render(body))


async def whoami(request: Request) -> JSONResponse:
    principal = access.principal_of(request)
    return JSONResponse(
        {
            "type": "api_key_principal",
            "role": principal.role,
            "key_id": principal.key_id,
            "environment_id": principal.environment_id,
            "tunnel_id": principal.tunnel_id,
        }
    )


routes = [
    endpoint(PATH, get=list_keys, post=create),
    endpoint(PATH + "/{api_key_id}", get=retrieve, post=update),
    endpoint(access.WHOAMI, get=whoami),
]
