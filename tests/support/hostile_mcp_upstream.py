"""A 2026-07-28 HTTP MCP server that answers some ``tools/call`` requests with hostile bytes.

It is ``mcp_gateway_upstream``'s server (label ``hostile``) plus one tool per scenario in
``SCENARIOS``: the tool is listed normally, so both of the gateway's lanes route calls to
it, but a call of it is answered by ``Hostile`` with the scenario's canned HTTP response
(status, content type, body) built around the request's own id and progress token. Every
other request reaches the real server.

Run: ``python -m tests.support.hostile_mcp_upstream --port 0``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.serving import serve
from tests.support.mcp_gateway_upstream import build

SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"
UPSTREAM_IDENTITY = {"name": "hostile-upstream-SECRET", "version": "6.6.6"}
Answer = tuple[int, str, bytes]
"""Status, content type and body of a canned HTTP response."""


def _json(message: Any) -> bytes:
    return json.dumps(message).encode()


def _sse(*messages: Any, event: str = "message") -> bytes:
    return b"".join(f"event: {event}\r\ndata: {json.dumps(m)}\r\n\r\n".encode() for m in messages)


def _result(rid: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def _progress(params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False, "resultType": "complete"}


def _foreign_progress(rid: Any, token: Any) -> Answer:
    notes = [
        _progress({"progressToken": "someone-elses-call", "progress": 1, "message": "foreign token"}),
        _progress({"progress": 2, "message": "no token at all"}),
        _progress({"progressToken": token, "progress": "lots", "message": "progress not a number"}),
        _progress(
            {
                "progressToken": token,
                "progress": 3,
                "message": "own token",
                "_meta": {SERVER_INFO_KEY: UPSTREAM_IDENTITY},
                "smuggled": "extra field",
            }
        ),
    ]
    return 200, "text/event-stream", _sse(*notes, _result(rid, _text("done")))


SCENARIOS: dict[str, Callable[[Any, Any], Answer]] = {
    # HTTP status and media type
    "h_500_json_result": lambda rid, tok: (500, "application/json", _json(_result(rid, _text("fake ok")))),
    "h_400_json_error": lambda rid, tok: (
        400,
        "application/json",
        _json({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "upstream says no"}}),
    ),
    "h_503_text": lambda rid, tok: (503, "text/plain", b"overloaded"),
    "h_html": lambda rid, tok: (200, "text/html", b"<html>login page</html>"),
    "h_202": lambda rid, tok: (202, "", b""),
    "h_redirect": lambda rid, tok: (307, "", b""),
    "h_not_json": lambda rid, tok: (200, "application/json", b"{this is not json"),
    # the envelope
    "h_wrong_id_json": lambda rid, tok: (200, "application/json", _json(_result(f"{rid}-other", _text("x")))),
    "h_wrong_id_sse": lambda rid, tok: (200, "text/event-stream", _sse(_result(f"{rid}-other", _text("x")))),
    "h_other_event": lambda rid, tok: (
        200,
        "text/event-stream",
        _sse(_result(rid, _text("from an event named other")), event="other")
        + _sse(_result(rid, _text("from a message event"))),
    ),
    "h_bad_sse_json": lambda rid, tok: (200, "text/event-stream", b"event: message\r\ndata: {nope\r\n\r\n"),
    # the result
    "h_surrogate": lambda rid, tok: (
        200,
        "application/json",
        b'{"jsonrpc":"2.0","id":'
        + _json(rid)
        + b',"result":{"content":[{"type":"text","text":"\\ud800"}],"resultType":"complete"}}',
    ),
    "h_nan": lambda rid, tok: (
        200,
        "application/json",
        b'{"jsonrpc":"2.0","id":'
        + _json(rid)
        + b',"result":{"content":[],"resultType":"complete","structuredContent":{"x":NaN}}}',
    ),
    "h_meta_list": lambda rid, tok: (
        200,
        "application/json",
        _json(_result(rid, {"content": [], "resultType": "complete", "_meta": [1]})),
    ),
    "h_structured_null": lambda rid, tok: (
        200,
        "application/json",
        _json(_result(rid, {"content": [], "resultType": "complete", "structuredContent": None})),
    ),
    "h_bad_block": lambda rid, tok: (
        200,
        "application/json",
        _json(_result(rid, {"content": [{"type": "text"}], "resultType": "complete"})),
    ),
    "h_extra_fields": lambda rid, tok: (
        200,
        "application/json",
        _json(_result(rid, {**_text("x"), "upstreamSecret": UPSTREAM_IDENTITY})),
    ),
    "h_input_required": lambda rid, tok: (
        200,
        "application/json",
        _json(_result(rid, {"resultType": "input_required", "inputRequests": {}})),
    ),
    "h_server_info": lambda rid, tok: (
        200,
        "application/json",
        _json(_result(rid, {**_text("x"), "_meta": {SERVER_INFO_KEY: UPSTREAM_IDENTITY, "kept": 1}})),
    ),
    "h_no_result_type": lambda rid, tok: (
        200,
        "application/json",
        _json(_result(rid, {"content": [{"type": "text", "text": "x"}]})),
    ),
    # progress
    "h_foreign_progress": _foreign_progress,
}


class Hostile:
    """Answers a ``tools/call`` of a scenario's tool with the scenario's canned response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope) if scope["type"] == "http" else None
        scenario = SCENARIOS.get(headers.get("mcp-name", "")) if headers is not None else None
        if scenario is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        token = (request.get("params", {}).get("_meta") or {}).get("progressToken")
        status, media, content = scenario(request.get("id"), token)
        sent = [(b"content-length", str(len(content)).encode())]
        if media:
            sent.append((b"content-type", media.encode()))
        if status in (301, 302, 307, 308):
            sent.append((b"location", scope["path"].encode()))
        await send({"type": "http.response.start", "status": status, "headers": sent})
        await send({"type": "http.response.body", "body": content})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = build("hostile")
    for name in SCENARIOS:

        def stub() -> str:
            return "the stub ran: the hostile answer was not sent"

        server.add_tool(stub, name=name, description=f"Hostile scenario {name}.", structured_output=False)
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=args.host,
    )
    serve(Hostile(app), args.host, args.port)


if __name__ == "__main__":
    main()
