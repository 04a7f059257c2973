"""The HTTP side of the memory mounts: ``GET``/``PUT /tether/memory/{slug}`` beside ``/mcp``.

Only the gateway calls these (same bearer token as ``/mcp``; neither is an MCP tool): it reads
what a mount holds and sends what to write (``sandbox_server.memory_mounts``).
"""

from __future__ import annotations

import errno
import json
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox_server.memory_mounts import MAX_BODY_BYTES, PATH, SLUG, MemoryMounts, MountError


class MemoryRoutes:
    """ASGI: ``PATH/{slug}`` requests are the mounts', everything else goes to ``app``."""

    def __init__(self, app: ASGIApp, mounts: MemoryMounts) -> None:
        self.app = app
        self.mounts = mounts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith(PATH + "/"):
            await self.app(scope, receive, send)
            return
        response = await handle(self.mounts, Request(scope, receive), path[len(PATH) + 1 :])
        await response(scope, receive, send)


def _strings(value: Any, nullable: bool) -> dict[str, str | None]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and (isinstance(v, str) or (nullable and v is None)) for k, v in value.items()
    ):
        raise ValueError("expected an object of strings")
    return value


async def handle(mounts: MemoryMounts, request: Request, slug: str) -> JSONResponse:
    if not SLUG.match(slug):
        return JSONResponse({"error": "GET or PUT /tether/memory/{slug}"}, 404)
    if request.method == "GET":
        return JSONResponse(await anyio.to_thread.run_sync(mounts.state, slug))
    if request.method != "PUT":
        return JSONResponse({"error": "GET or PUT /tether/memory/{slug}"}, 405)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"the body is over {MAX_BODY_BYTES} bytes"}, 413)
    try:
        sent = json.loads(body)
        changes, expect = _strings(sent["apply"], True), _strings(sent.get("expect") or {}, True)
        base = {k: v for k, v in _strings(sent["base"], False).items() if v is not None}
        skipped = await anyio.to_thread.run_sync(mounts.apply, slug, sent["access"], changes, expect, base)
    except (ValueError, KeyError, TypeError, AttributeError, MountError) as exc:
        return JSONResponse({"error": f"not a memory update: {exc}"}, 400)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return JSONResponse({"error": "the workspace's disk quota is full"}, 507)
        raise
    return JSONResponse({"skipped": skipped})
