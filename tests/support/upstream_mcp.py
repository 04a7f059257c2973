"""A small MCP server in its own process, standing in for a team's own tool server.

Run: ``python -m tests.support.upstream_mcp --port 0`` (prints ``listening on URL``).
"""

from __future__ import annotations

import argparse
import hashlib
import os

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import ToolAnnotations

from gateway.serving import serve


def build() -> MCPServer:
    server = MCPServer("upstream-fixture")

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> str:
        return str(a + b)

    @server.tool(description="Always fails, to prove errors reach the model.")
    def explode(reason: str) -> str:
        raise ToolError(f"exploded: {reason}")

    @server.tool(description="Report a digest of the Authorization header received (credential tests).")
    def whoami(ctx: Context) -> str:
        header = (ctx.headers or {}).get("authorization")
        # A digest, so a test can check which credential arrived without the tool's own
        # output carrying the secret into the session log.
        return "anonymous" if header is None else "sha256:" + hashlib.sha256(header.encode()).hexdigest()

    @server.tool(description="Append a line to a ledger (a side effect that must not repeat), then block.")
    async def record(line: str, ledger: str, started_fifo: str) -> str:
        await anyio.to_thread.run_sync(_append_line, ledger, line)
        await anyio.to_thread.run_sync(_signal, started_fifo)
        await anyio.sleep(3600)  # stands in for a long-running call the gateway dies during
        return "recorded"

    @server.tool(
        description="Look a key up (read-only); the first call blocks, later ones answer at once.",
        annotations=ToolAnnotations(read_only_hint=True),
    )
    async def lookup(key: str, marker: str, started_fifo: str) -> str:
        if await anyio.to_thread.run_sync(_first_call, marker):
            await anyio.to_thread.run_sync(_signal, started_fifo)
            await anyio.sleep(3600)
        return f"value-of-{key}"

    return server


def _append_line(path: str, line: str) -> None:
    with open(path, "a") as handle:
        handle.write(line + "\n")


def _first_call(marker: str) -> bool:
    """True exactly once per marker path (creating it is atomic with O_EXCL)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _signal(fifo: str) -> None:
    """Tell the waiting test this call has started (it blocks reading the FIFO)."""
    with open(fifo, "w") as handle:
        handle.write("started\n")


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
