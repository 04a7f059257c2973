"""HTTP routes for ``/v1/tunnels``, ``/v1/tunnels/{id}/certificates`` and the agents' WebSocket
endpoint ``/v1/tunnels/connect``.

The hub comes from ``request.app.state.tunnel_hub`` (set by ``gateway.tunnels.wiring``).
``/v1/tunnels/connect`` authenticates with the tunnel token, not an API key, so it must be
one of the API-key middleware's public paths (``wiring.PUBLIC_PATHS``).
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.api.bodies import parse
from gateway.api.pagination import bool_param, decode_cursor, limit_param, page_body
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.resources import tunnel_certificates, tunnels
from gateway.schemas.tunnels import TunnelCertificateCreate, TunnelCreate, TunnelRotateToken
from gateway.tunnels.hub import CLOSE_ARCHIVED, CLOSE_TOKEN_REFUSED, Handshake, TunnelHub
from tunnel_agent.link import LinkClosed
from tunnel_agent.protocol import CONNECT_PATH, ProtocolError

MAX_LIST_LIMIT = 1000


def hub(connection: HTTPConnection) -> TunnelHub:
    tunnel_hub: TunnelHub = connection.app.state.tunnel_hub
    return tunnel_hub


async def create(request: Request) -> JSONResponse:
    gateway, tunnel_hub = state(request), hub(request)
    body = await parse(request, TunnelCreate, gateway.settings.max_body_bytes)
    return JSONResponse(await tunnels.create(gateway.store, tunnel_hub.sealer, body, tunnel_hub.base_domain))


async def list_tunnels(request: Request) -> JSONResponse:
    token = request.query_params.get("page")
    page = await state(request).store.list_resources(
        tunnels.KIND,
        cursor=decode_cursor(token) if token else None,
        limit=limit_param(request, maximum=MAX_LIST_LIMIT),
        include_archived=bool_param(request, "include_archived"),
    )
    return JSONResponse(page_body(page))


async def retrieve(request: Request) -> JSONResponse:
    return JSONResponse(await tunnels.get(state(request).store, request.path_params["tunnel_id"]))


async def archive(request: Request) -> JSONResponse:
    tunnel_id = request.path_params["tunnel_id"]
    body = await tunnels.archive(state(request).store, tunnel_id)
    await hub(request).drop_stale(tunnel_id, None, CLOSE_ARCHIVED, "tunnel archived")
    return JSONResponse(body)


async def reveal_token(request: Request) -> JSONResponse:
    tunnel_hub = hub(request)
    return JSONResponse(
        await tunnels.reveal_token(state(request).store, tunnel_hub.sealer, request.path_params["tunnel_id"])
    )


async def rotate_token(request: Request) -> JSONResponse:
    gateway, tunnel_hub = state(request), hub(request)
    tunnel_id = request.path_params["tunnel_id"]
    body = await parse(request, TunnelRotateToken, gateway.settings.max_body_bytes)
    token = await tunnels.rotate_token(gateway.store, tunnel_hub.sealer, tunnel_id, body.reason)
    await tunnel_hub.drop_stale(tunnel_id, token["id"], CLOSE_TOKEN_REFUSED, "tunnel token rotated")
    return JSONResponse(token)


async def create_certificate(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, TunnelCertificateCreate, gateway.settings.max_body_bytes)
    return JSONResponse(
        await tunnel_certificates.create(gateway.store, request.path_params["tunnel_id"], body)
    )


async def list_certificates(request: Request) -> JSONResponse:
    token = request.query_params.get("page")
    page = await tunnel_certificates.list_page(
        state(request).store,
        request.path_params["tunnel_id"],
        cursor=decode_cursor(token) if token else None,
        limit=limit_param(request, maximum=MAX_LIST_LIMIT),
        include_archived=bool_param(request, "include_archived"),
    )
    return JSONResponse(page_body(page))


async def retrieve_certificate(request: Request) -> JSONResponse:
    params = request.path_params
    return JSONResponse(
        await tunnel_certificates.get(state(request).store, params["tunnel_id"], params["certificate_id"])
    )


async def archive_certificate(request: Request) -> JSONResponse:
    params = request.path_params
    return JSONResponse(
        await tunnel_certificates.archive(state(request).store, params["tunnel_id"], params["certificate_id"])
    )


class StarletteLink:
    """The gateway's side of a tunnel link: a Starlette WebSocket, binary messages only."""

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket

    async def send(self, message: bytes) -> None:
        try:
            await self._websocket.send_bytes(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise LinkClosed("agent went away", 1006) from None

    async def receive(self) -> bytes:
        try:
            message = await self._websocket.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise LinkClosed("agent went away", 1006) from None
        if message["type"] == "websocket.disconnect":
            raise LinkClosed(message.get("reason") or "agent disconnected", message.get("code", 1000))
        data = message.get("bytes")
        if data is None:
            raise ProtocolError("text message on a tunnel link")
        return bytes(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            await self._websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass


async def connect(websocket: WebSocket) -> None:
    """Accept first, so a refusal can carry a close code (4401, 4403...) the agent can read."""
    await websocket.accept()
    headers = websocket.headers
    authorization = headers.get("authorization", "")
    token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else None
    client = websocket.client
    await hub(websocket).serve(
        StarletteLink(websocket),
        Handshake(
            token=token,
            agent_id=headers.get("tether-agent-id"),
            slot=headers.get("tether-agent-slot"),
            protocol=headers.get("tether-tunnel-protocol"),
            peer=f"{client.host}:{client.port}" if client else "unknown",
        ),
    )


routes: list[BaseRoute] = [
    WebSocketRoute(CONNECT_PATH, connect),
    endpoint("/v1/tunnels", post=create, get=list_tunnels),
    endpoint("/v1/tunnels/{tunnel_id}", get=retrieve),
    endpoint("/v1/tunnels/{tunnel_id}/archive", post=archive),
    endpoint("/v1/tunnels/{tunnel_id}/reveal_token", post=reveal_token),
    endpoint("/v1/tunnels/{tunnel_id}/rotate_token", post=rotate_token),
    endpoint("/v1/tunnels/{tunnel_id}/certificates", post=create_certificate, get=list_certificates),
    endpoint("/v1/tunnels/{tunnel_id}/certificates/{certificate_id}", get=retrieve_certificate),
    endpoint("/v1/tunnels/{tunnel_id}/certificates/{certificate_id}/archive", post=archive_certificate),
]
