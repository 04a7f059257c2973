"""An on-prem MCP server only the tunnel agent can reach (in tests: bound to 127.0.0.1).

``whoami`` reports a SHA-256 digest of the ``Authorization`` header it received, so a test
can check that the agent's credential arrived without the secret itself travelling back
through the tunnel. Run: ``python -m tests.support.tunnel_onprem --port 0`` (with ``--certfile``
and ``--keyfile`` it serves HTTPS only, for tests of TLS on the agent's last hop).
"""

from __future__ import annotations

import argparse
import hashlib

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.transport_security import TransportSecuritySettings

from gateway.serving import TLSFiles, bind_socket, serve_socket


def fingerprint(authorization: str) -> str:
    return "sha256:" + hashlib.sha256(authorization.encode()).hexdigest()


def build(name: str) -> MCPServer:
    server = MCPServer(name)

    @server.tool(description="Digest of the Authorization header this server received.")
    def whoami(ctx: Context) -> str:
        header = (ctx.headers or {}).get("authorization")
        return "anonymous" if header is None else fingerprint(header)

    @server.tool(description="Which server answered (tells two on-prem servers apart).")
    def server_name() -> str:
        return name

    @server.tool(description="Echo a payload (size tests).")
    def echo(text: str) -> str:
        return text

    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="onprem")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    app = build(args.name).streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=args.host,
    )
    tls = TLSFiles(args.certfile, args.keyfile) if args.certfile else None
    serve_socket(app, bind_socket(args.host, args.port), tls=tls)


if __name__ == "__main__":
    main()
