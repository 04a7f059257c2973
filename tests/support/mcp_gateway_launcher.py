"""Run a gateway with the MCP gateway wired in, the way ``gateway.app`` will once merged.

Mirrors ``gateway.app.run_gateway``, then adds exactly what the wiring asks of the app:
the routes, the lifespan (inside the app's own, once the store and keyring exist), and
public ``/mcp/`` prefixes in the API-key middleware (which otherwise only knows exact
public paths).

Run: ``python -m tests.support.mcp_gateway_launcher --port 0 --data-dir DIR [--policy FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.api.auth import APIKeyMiddleware
from gateway.app import create_app
from gateway.config import SCRIPTED_MODEL_PATH, Settings
from gateway.mcp_gateway import wiring
from gateway.serving import bind_socket, serve_socket, socket_url
from policies.engine import PolicySet


class PrefixAwareAPIKeyMiddleware(APIKeyMiddleware):
    """``APIKeyMiddleware`` plus public path prefixes (what the lead adds to the real one)."""

    def __init__(
        self,
        app: ASGIApp,
        keys: list[str],
        public_paths: tuple[str, ...] = ("/health",),
        public_prefixes: tuple[str, ...] = (),
    ) -> None:
        super().__init__(app, keys, public_paths)
        self.public_prefixes = public_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.public_prefixes):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def add_mcp_gateway(app: Starlette, settings: Settings, policies: PolicySet) -> None:
    app.router.routes.extend(wiring.routes())
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[None]:
        async with original(served):
            gateway = served.state.gateway
            async with wiring.lifespan(served, gateway.store, gateway.keyring, policies, settings):
                yield

    app.router.lifespan_context = lifespan
    for index, middleware in enumerate(app.user_middleware):
        if middleware.cls is APIKeyMiddleware:
            options: dict[str, Any] = dict(middleware.kwargs)
            app.user_middleware[index] = Middleware(
                PrefixAwareAPIKeyMiddleware,
                keys=options["keys"],
                public_paths=options["public_paths"],
                public_prefixes=wiring.PUBLIC_PATH_PREFIXES,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--policy", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx2", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.from_env(args.data_dir)
    settings.policy_files += args.policy
    policies = PolicySet.load(settings.policy_files)
    sock = bind_socket(args.host, args.port)
    if settings.model_base_url is None and settings.model_api_key is None:
        settings.serve_scripted_model = True
        settings.model_base_url = socket_url(sock) + SCRIPTED_MODEL_PATH
    app = create_app(settings, policies)
    add_mcp_gateway(app, settings, policies)
    serve_socket(app, sock, log_level="warning")


if __name__ == "__main__":
    main()
