"""An HTTP MCP server for the MCP gateway tests, run twice with different labels.

Both copies offer ``add``, ``whoami``, the ``greet`` prompt, the ``memo://readme``
resource and the ``notes://{topic}`` template, so a virtual server selecting both must
namespace them; each also has something of its own (``only_LABEL``, ``memo://LABEL``).

For the large-result, cancellation and progress tests: ``blob`` answers SIZE bytes,
``block`` leaves ``MARKER.cancelled`` behind when its call is cancelled, ``steps`` reports
progress, ``polled_blob`` answers over a resumed stream (with ``--resumable``), and ``GET /_stats`` counts the live (legacy) sessions, i.e. server instances.
With ``--gzip`` every answer is gzip-compressed whatever the request's ``Accept-Encoding``
says, as a misbehaving server (or proxy) might; with ``--resumable`` its SSE events carry
ids (an event store), so a client whose answer stream breaks resumes it over a GET with
``Last-Event-ID`` (session-based servers do: combine with ``--legacy-only``).

Run: ``python -m tests.support.mcp_gateway_upstream --label alpha --port 0``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import zlib
from typing import Annotated

import anyio
import anyio.to_thread
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import Field
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.serving import serve


def build(label: str) -> MCPServer:
    server = MCPServer(f"upstream-{label}")

    @server.tool(description="Add two integers; the answer names the server that computed it.")
    def add(a: int, b: int) -> str:
        return f"{label}:{a + b}"

    def only() -> str:
        return f"only on {label}"

    server.add_tool(only, name=f"only_{label}", description=f"A tool only {label} has.")

    @server.tool(description="Echo text back (policy tests match on it).")
    def echo(text: str) -> str:
        return f"{label} echo: {text}"

    @server.tool(description="Always fails, to prove is_error results pass through.")
    def explode(reason: str) -> str:
        raise ToolError(f"exploded: {reason}")

    @server.tool(description="A digest of the Authorization header received (credential tests).")
    def whoami(ctx: Context) -> str:
        header = (ctx.headers or {}).get("authorization")
        return "anonymous" if header is None else "sha256:" + hashlib.sha256(header.encode()).hexdigest()

    @server.tool(description="The value of request header NAME as received (empty when absent).")
    def seen_header(name: str, ctx: Context) -> str:
        return (ctx.headers or {}).get(name, "")

    @server.tool(description="The calling client's name, from the request's envelope (express-lane tests).")
    def client_name(ctx: Context) -> str:
        meta = (ctx.request_context.params or {}).get("_meta") or {}
        if (info := meta.get("io.modelcontextprotocol/clientInfo")) is not None:
            return str(info.get("name", ""))
        handshake = ctx.request_context.session.client_params  # a session's initialize
        return handshake.client_info.name if handshake is not None else ""

    @server.tool(description="Echo REGION, mirrored in the Mcp-Param-Region header the server checks.")
    def region(
        region: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Region"})], ctx: Context
    ) -> str:
        return f"{label} region {region}, header {(ctx.headers or {}).get('mcp-param-region', '')}"

    @server.tool(description="Create MARKER (so a test knows the call arrived), then never answer.")
    async def block(marker: str, ctx: Context) -> str:
        # MARKER holds the call's session id (empty when sessionless), for leak tests.
        session = (ctx.headers or {}).get("mcp-session-id", "")
        await anyio.to_thread.run_sync(_touch, marker, session)
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_touch, marker + ".cancelled")
        return "unreachable"

    # Unstructured: the text is the whole payload, so SIZE is (nearly) the message's size.
    @server.tool(description="Answer SIZE bytes of text (large-result tests).", structured_output=False)
    def blob(size: int) -> str:
        return (label[0] * size)[:size]

    @server.tool(
        description="Like blob, but answered over the resumed stream (--resumable).", structured_output=False
    )
    async def polled_blob(size: int, ctx: Context) -> str:
        # Closing the POST stream makes the client resume it (GET, Last-Event-ID) for the answer.
        await ctx.close_sse_stream()
        return (label[0] * size)[:size]

    @server.tool(description="Report COUNT progress steps, then answer (progress tests).")
    async def steps(count: int, ctx: Context) -> str:
        for step in range(1, count + 1):
            await ctx.report_progress(step, count, f"step {step} of {count}")
        return f"{label} did {count} steps"

    @server.tool(description="Add a tool, prompt or resource named NAME and announce the list change.")
    async def grow(kind: str, name: str, ctx: Context) -> str:
        if kind == "tools":

            def grown() -> str:
                return f"{name} on {label}"

            server.add_tool(grown, name=name, description="Added at runtime.")
            await ctx.notify_tools_changed()
        elif kind == "prompts":

            def prompt() -> str:
                return f"prompt {name} from {label}"

            server.prompt(name=name)(prompt)
            await ctx.notify_prompts_changed()
        else:

            def read() -> str:
                return f"resource {name} from {label}"

            server.resource(f"grown://{name}", name=name)(read)
            await ctx.notify_resources_changed()
        return f"grew {kind} {name}"

    @server.resource("memo://readme", name="readme", mime_type="text/plain")
    def readme() -> str:
        return f"readme of {label}"

    @server.resource(f"memo://{label}", name=f"memo_{label}", mime_type="text/plain")
    def own_memo() -> str:
        return f"memo of {label}"

    @server.resource("notes://{topic}", name="notes")
    def notes(topic: str) -> str:
        return f"{label} notes on {topic}"

    @server.prompt(description="Greet someone.")
    def greet(name: str) -> str:
        return f"{label} says hello to {name}"

    return server


def _touch(path: str, content: str = "") -> None:
    """Write CONTENT to a temporary name first, so a watcher never sees a half-written marker."""
    fd = os.open(path + ".tmp", os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content.encode())
    finally:
        os.close(fd)
    os.replace(path + ".tmp", path)


class LegacyOnly:
    """Refuse 2026-07-28 requests, like a server that predates that revision.

    A probing client (``mode="auto"``) then falls back to the initialize handshake, so the
    gateway's legacy upstream path gets exercised.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        version = Headers(scope=scope).get("mcp-protocol-version") if scope["type"] == "http" else None
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": "unknown protocol version"},
            }
            await JSONResponse(body, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class AlwaysGzip:
    """Gzip every HTTP answer, streamed ones chunk by chunk, ignoring ``Accept-Encoding``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)

        async def compressing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"content-length"]
                message = {**message, "headers": [*headers, (b"content-encoding", b"gzip")]}
            elif message["type"] == "http.response.body":
                more = message.get("more_body", False)
                body = compressor.compress(message.get("body", b""))
                body += compressor.flush(zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
                message = {**message, "body": body}
            await send(message)

        await self.app(scope, receive, compressing)


class Stats:
    """``GET /_stats``: how many sessions (server instances) the upstream holds right now."""

    def __init__(self, app: ASGIApp, server: MCPServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/_stats":
            manager = self.server.session_manager
            sessions = list(manager._server_instances)  # the SDK keeps no public list
            await JSONResponse({"sessions": len(sessions), "ids": sessions})(scope, receive, send)
            return
        await self.app(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--legacy-only", action="store_true")
    parser.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--gzip", action="store_true", help="gzip every answer (AlwaysGzip)")
    parser.add_argument("--resumable", action="store_true", help="give SSE events ids (an event store)")
    args = parser.parse_args()
    server = build(args.label)
    # Imported here: resumable_mcp builds its server from this module.
    from tests.support.resumable_mcp import MemoryEventStore

    app: ASGIApp = server.streamable_http_app(
        streamable_http_path="/mcp",
        event_store=MemoryEventStore() if args.resumable else None,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=args.host,
        max_request_body_size=args.max_request_bytes,
    )
    app = Stats(LegacyOnly(app) if args.legacy_only else app, server)
    if args.gzip:
        app = AlwaysGzip(app)
    serve(app, args.host, args.port)


if __name__ == "__main__":
    main()
