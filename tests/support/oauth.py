"""Small HTTP servers on loopback for credential tests, each in a thread of the test process.

``TokenEndpoint`` is an OAuth token endpoint that hands out numbered access tokens (``fresh-1``,
``fresh-2``, ...), records each call, and refuses them all once ``failing`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.serving import bind_socket, socket_url


class LoopbackServer:
    """Serves ``routes`` on a free loopback port from ``start`` until ``stop``."""

    def __init__(self, routes: list[Route]) -> None:
        self.sock = bind_socket("127.0.0.1", 0)
        self.base_url = socket_url(self.sock)
        self.server = uvicorn.Server(uvicorn.Config(Starlette(routes=routes), log_level="error"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> None:
        self.thread.start()
        while not self.server.started:
            self.thread.join(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


class TokenEndpoint(LoopbackServer):
    def __init__(self) -> None:
        super().__init__([Route("/token", self.token, methods=["POST"])])
        self.calls: list[dict[str, Any]] = []
        self.failing = False
        self.url = self.base_url + "/token"

    async def token(self, request: Request) -> JSONResponse:
        form = dict(await request.form())
        self.calls.append({"form": form, "authorization": request.headers.get("authorization")})
        if self.failing:
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        return JSONResponse(
            {"access_token": f"fresh-{len(self.calls)}", "expires_in": 3600, "token_type": "Bearer"}
        )


@pytest.fixture
def token_endpoint() -> Iterator[TokenEndpoint]:
    endpoint = TokenEndpoint()
    endpoint.start()
    yield endpoint
    endpoint.stop()
