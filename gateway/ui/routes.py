"""Serve the session trail page: ``/ui`` (HTML), ``/ui/app.js`` and ``/ui/app.css``.

The three files are static and hold no data, so they are public (``PUBLIC_PATHS``, for
``APIKeyMiddleware``); the page asks for the API key and sends it with every data call.
They are read once at import: the page is three small files and needs no build step.
A strict Content-Security-Policy allows only this origin's script, style and requests.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gateway.api.routing import endpoint

STATIC = Path(__file__).parent / "static"
PAGE_PATH = "/ui"
PUBLIC_PATHS = (PAGE_PATH, PAGE_PATH + "/", PAGE_PATH + "/app.js", PAGE_PATH + "/app.css")

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
    "app.css": "text/css; charset=utf-8",
}
_CONTENT = {name: (STATIC / name).read_bytes() for name in _FILES}


def _static(name: str) -> Response:
    return Response(_CONTENT[name], media_type=_FILES[name], headers=SECURITY_HEADERS)


async def page(request: Request) -> Response:
    return _static("index.html")


async def script(request: Request) -> Response:
    return _static("app.js")


async def stylesheet(request: Request) -> Response:
    return _static("app.css")


async def slash(request: Request) -> Response:
    return RedirectResponse(PAGE_PATH, status_code=308)


routes: list[Route] = [
    endpoint(PAGE_PATH, get=page),
    endpoint(PAGE_PATH + "/", get=slash),
    endpoint(PAGE_PATH + "/app.js", get=script),
    endpoint(PAGE_PATH + "/app.css", get=stylesheet),
]
