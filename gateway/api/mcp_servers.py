"""HTTP routes for the MCP gateway's registry, tokens and audit log.

- ``/v1/mcp_servers``: upstream MCP servers (URL or stdio); responses include live
  ``health`` (circuit breaker, background connection or process state).
- ``/v1/mcp_virtual_servers``: named selections served at ``/mcp/{name}``; ``/tools``
  previews the exposed (namespaced) tool names.
- ``/v1/mcp_tokens``: mint a JWT scoped to virtual servers.
- ``/v1/mcp_audit``: the call audit log, filterable by ``virtual_server``, ``outcome``,
  ``tool``, ``upstream`` and ``caller_id``.

Resources may be addressed by id or by name. Errors are shaped like every other route's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway import ids
from gateway.api.bodies import parse
from gateway.api.pagination import page_body, page_params
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.mcp_gateway.access import Caller
from gateway.mcp_gateway.context import RequestInfo
from gateway.mcp_gateway.registry import SERVER, VIRTUAL_SERVER, render
from gateway.mcp_gateway.schemas import (
    McpServerCreate,
    McpServerUpdate,
    TokenCreate,
    VirtualServerCreate,
    VirtualServerUpdate,
)
from gateway.mcp_gateway.wiring import McpGateway, running_gateway
from gateway.store.base import Body

MAX_BODY = 1024 * 1024


def _gateway(request: Request) -> McpGateway:
    return running_gateway(request.app)


def _server(gateway: McpGateway, body: Body) -> Body:
    return {**render(body), "health": gateway.health(body["name"])}


def _limit(request: Request) -> int:
    return min(state(request).settings.max_body_bytes, MAX_BODY)


# Upstream servers ------------------------------------------------------------------------


async def create_server(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    created = await gateway.registry.create_server(await parse(request, McpServerCreate, _limit(request)))
    return JSONResponse(_server(gateway, created))


async def list_servers(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    cursor, limit = page_params(request)
    page = await gateway.registry.store.list_resources(
        SERVER, cursor=cursor, limit=limit, include_archived=False
    )
    return JSONResponse(page_body(page, lambda body: _server(gateway, body)))


async def retrieve_server(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    body = await gateway.registry.resolve(SERVER, request.path_params["server_id"])
    return JSONResponse(_server(gateway, body))


async def update_server(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    update = await parse(request, McpServerUpdate, _limit(request))
    return JSONResponse(
        _server(gateway, await gateway.registry.update_server(request.path_params["server_id"], update))
    )


async def delete_server(request: Request) -> JSONResponse:
    return JSONResponse(await _gateway(request).registry.delete_server(request.path_params["server_id"]))


# Virtual servers -------------------------------------------------------------------------


async def create_virtual_server(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    body = await parse(request, VirtualServerCreate, _limit(request))
    return JSONResponse(render(await gateway.registry.create_virtual_server(body)))


async def list_virtual_servers(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    cursor, limit = page_params(request)
    page = await gateway.registry.store.list_resources(
        VIRTUAL_SERVER, cursor=cursor, limit=limit, include_archived=False
    )
    return JSONResponse(page_body(page, render))


async def retrieve_virtual_server(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    return JSONResponse(render(await gateway.registry.resolve(VIRTUAL_SERVER, request.path_params["vs_id"])))


async def update_virtual_server(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    update = await parse(request, VirtualServerUpdate, _limit(request))
    updated = await gateway.registry.update_virtual_server(request.path_params["vs_id"], update)
    return JSONResponse(render(updated))


async def delete_virtual_server(request: Request) -> JSONResponse:
    return JSONResponse(await _gateway(request).registry.delete_virtual_server(request.path_params["vs_id"]))


async def virtual_server_tools(request: Request) -> JSONResponse:
    """The tools a client of this virtual server sees, with where each one goes."""
    gateway = _gateway(request)
    body = await gateway.registry.resolve(VIRTUAL_SERVER, request.path_params["vs_id"])
    view = await gateway.handlers.view(RequestInfo(Caller("api_key", "rest"), body))
    tools: list[dict[str, Any]] = [
        {
            "name": name,
            "upstream": target.upstream,
            "upstream_tool": target.name,
            "description": tool.description,
        }
        for name, (target, tool) in view.tools.items()
    ]
    return JSONResponse({"data": tools, "unavailable": view.unavailable})


# Tokens and audit ------------------------------------------------------------------------


async def create_token(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    body = await parse(request, TokenCreate, _limit(request))
    minted = gateway.access.mint(body.subject, body.virtual_servers, body.expires_in)
    return JSONResponse(
        {
            "type": "mcp_token",
            "token": minted["token"],
            "id": minted["jti"],
            "subject": body.subject,
            "virtual_servers": sorted(set(body.virtual_servers)),
            "expires_at": ids.timestamp(datetime.fromtimestamp(minted["exp"], UTC)),
        }
    )


AUDIT_FILTERS = {
    "virtual_server": "virtual_server",
    "outcome": "outcome",
    "tool": "tool",
    "upstream": "upstream",
    "caller_id": "caller.id",
}


async def list_audit(request: Request) -> JSONResponse:
    gateway = _gateway(request)
    cursor, limit = page_params(request)
    filters = {
        path: request.query_params[param]
        for param, path in AUDIT_FILTERS.items()
        if param in request.query_params
    }
    return JSONResponse(page_body(await gateway.audit.query(filters, cursor, limit)))


routes = [
    endpoint("/v1/mcp_servers", post=create_server, get=list_servers),
    endpoint("/v1/mcp_servers/{server_id}", get=retrieve_server, post=update_server, delete=delete_server),
    endpoint("/v1/mcp_virtual_servers", post=create_virtual_server, get=list_virtual_servers),
    endpoint(
        "/v1/mcp_virtual_servers/{vs_id}",
        get=retrieve_virtual_server,
        post=update_virtual_server,
        delete=delete_virtual_server,
    ),
    endpoint("/v1/mcp_virtual_servers/{vs_id}/tools", get=virtual_server_tools),
    endpoint("/v1/mcp_tokens", post=create_token),
    endpoint("/v1/mcp_audit", get=list_audit),
]
