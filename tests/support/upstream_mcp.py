"""A small MCP server in its own process, standing in for a team's own tool server.

Run: ``python -m tests.support.upstream_mcp --port 0`` (prints ``listening on URL``).
"""

from __future__ import annotations

import argparse

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

from gateway.serving import serve


def build() -> MCPServer:
    server = MCPServer("upstream-fixture")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> str:
        return str(a + b)

    @server.tool(description="Always fails, to prove errors reach the model.")
    def explode(reason: str) -> str:
        raise ToolError(f"exploded: {reason}")

    @server.tool(description="Report the Authorization header the server received (credential tests).")
    def whoami() -> str:
        return "anonymous"

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    app = build().streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=args.host,
    )
    serve(app, args.host, args.port)


if __name__ == "__main__":
    main()
