"""A session-based (2025-11-25 only) MCP upstream for the pooled-session review tests.

The gateway tests' server (``mcp_gateway_upstream.build``) plus:

- ``hold(marker, release)``: writes the call's session id into MARKER (so a test knows
  the call arrived, and in which session), then answers ``released`` once the file
  RELEASE exists: a call a test ends when it chooses;
- ``--hang-initialized FLAG``: while the file FLAG exists, a ``notifications/initialized``
  POST is never answered (the session was already created by ``initialize``), so a test
  can catch a client between the two steps of opening a session.

``GET /_stats`` lists the live sessions, as in ``mcp_gateway_upstream``.

Run: ``python -m tests.support.session_attack_upstream --label old --port 0``.
"""

from __future__ import annotations

import argparse
import json
import os

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.serving import serve
from tests.support.mcp_gateway_upstream import LegacyOnly, Stats, _touch, build


def add_hold(server: MCPServer) -> None:
    @server.tool(description="Write the session id into MARKER, answer once RELEASE exists.")
    async def hold(marker: str, release: str, ctx: Context) -> str:
        session = (ctx.headers or {}).get("mcp-session-id", "")
        await anyio.to_thread.run_sync(_touch, marker, session)
        # Polled: the release is a file another process writes (and a cancelled call must stop).
        while not await anyio.to_thread.run_sync(os.path.exists, release):  # noqa: ASYNC110
            await anyio.sleep(0.02)
        return f"released {session}"


class HangInitialized:
    """While FLAG exists, never answer a POSTed ``notifications/initialized``."""

    def __init__(self, app: ASGIApp, flag: str) -> None:
        self.app = app
        self.flag = flag

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hanging = await anyio.to_thread.run_sync(os.path.exists, self.flag)
        if scope["type"] != "http" or scope["method"] != "POST" or not hanging:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            method = json.loads(body).get("method")
        except (ValueError, AttributeError):
            method = None
        if method == "notifications/initialized":
            await anyio.sleep_forever()
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hang-initialized", default="")
    args = parser.parse_args()
    server = build(args.label)
    add_hold(server)
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=args.host,
    )
    app = LegacyOnly(app)
    if args.hang_initialized:
        app = HangInitialized(app, args.hang_initialized)
    serve(Stats(app, server), args.host, args.port)


if __name__ == "__main__":
    main()
