"""Serve the operator console: ``/ui`` (HTML) and its scripts and stylesheet (``ASSETS``).

The files are static and hold no data, so they are public (``PUBLIC_PATHS``, for
``APIKeyMiddleware``); the page asks for the API key and sends it with every data call.
They are read once at import: the page is a few small files and needs no build step.
A strict Content-Security-Policy allows only this origin's script, style and requests.
"""

from __future__ import annotations

from pathlib import Path

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.resources import tunnels

STATIC = Path(__file__).parent / "static"
PAGE_PATH = "/ui"
ASSETS = ("app.js", "actions.js", "trail.js", "lists.js", "pages.js", "figures.js", "app.css")
PUBLIC_PATHS = (PAGE_PATH, PAGE_PATH + "/", *(f"{PAGE_PATH}/{name}" for name in ASSETS))

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "actions.js": "text/javascript; charset=utf-8",
    "trail.js": "text/javascript; charset=utf-8",
    "lists.js": "text/javascript; charset=utf-8",
    "pages.js": "text/javascript; charset=utf-8",
    "figures.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_CONTENT = {name: (STATIC / name).read_bytes() for name in _FILES}


def _static(name: str) -> Response:
    return Response(_CONTENT[name], media_type=_FILES[name], headers=SECURITY_HEADERS)


async def page(request: Request) -> Response:
    return _static("index.html")


async def asset(request: Request) -> Response:
    return _static(request.url.path.rsplit("/", 1)[-1])


async def tunnel_connections(request: Request) -> JSONResponse:
    """The tunnel agents connected to this gateway process for one tunnel: the REST API has
    no such read, and the console's tunnel page shows who serves each tunnel. Needs the key."""
    tunnel = await tunnels.get(state(request).store, request.path_params["tunnel_id"])
    hub = getattr(request.app.state, "tunnel_hub", None)
    live = hub.connections(tunnel["id"]) if hub is not None else []
    now = anyio.current_time()
    return JSONResponse(
        {
            "data": [
                {
                    "agent_id": c.agent_id,
                    "slot": c.slot,
                    "connected_seconds": round(now - c.connected_at, 3),
                    "active_streams": c.mux.active_streams,
                }
                for c in live
            ]
        }
    )


async def slash(request: Request) -> Response:
    return RedirectResponse(PAGE_PATH, status_code=308)


routes: list[Route] = [
    endpoint(PAGE_PATH, get=page),
    endpoint(PAGE_PATH + "/", get=slash),
    *(endpoint(f"{PAGE_PATH}/{name}", get=asset) for name in ASSETS),
    endpoint("/v1/tether/tunnels/{tunnel_id}/connections", get=tunnel_connections),
]
