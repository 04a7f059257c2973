"""An on-prem MCP server (streamable HTTP) that only the tunnel agent can reach.

It stands in for a system inside the customer's network. It wants a bearer token, which the
tunnel agent adds on the last hop from ``tunnel.yaml`` (``${INVENTORY_TOKEN}``): the token
lives on-prem and never crosses the tunnel, so neither the gateway nor the model sees it.

    INVENTORY_TOKEN=... python examples/split_deployment/inventory_server.py --port 9100

Prints ``listening on http://HOST:PORT/mcp`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import hmac
import os
import socket

import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

STOCK = {"widgets": 42, "gears": 7, "sprockets": 0}


def build(token: str) -> MCPServer:
    server = MCPServer("inventory")

    @server.tool(description="Units in stock for an item (widgets, gears, sprockets).")
    def stock(item: str, ctx: Context) -> str:
        presented = (ctx.headers or {}).get("authorization", "")
        if token and not hmac.compare_digest(presented, f"Bearer {token}"):
            raise ToolError("unauthorized: the inventory wants its bearer token")
        count = STOCK.get(item.strip().lower())
        return f"{item}: unknown item" if count is None else f"{item}: {count} in stock at warehouse B"

    return server


def main() -> None:
    parser = argparse.ArgumentParser(description="A stand-in on-prem MCP server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    args = parser.parse_args()
    app = build(os.environ.get("INVENTORY_TOKEN", "")).streamable_http_app(
        streamable_http_path="/mcp",
        # Requests arrive with the tunnel's host name (inventory.<tunnel domain>), not localhost.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    sock = socket.create_server((args.host, args.port))
    print(f"listening on http://{args.host}:{sock.getsockname()[1]}/mcp", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
