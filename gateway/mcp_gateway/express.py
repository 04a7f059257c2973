"""The express lane: a 2026-07-28 ``tools/call`` relayed without the SDK's dispatch.

Profiled, a call through the gateway spent most of its time in the MCP SDK: its server
(task groups, per-request connection, models built and dumped) and its client (a client,
a dispatcher and an HTTP client per call, models again), several times the upstream's own
work. The express lane keeps the governed part (``ToolCalls``: lookup, policy, breaker,
timeout, size limit, audit) and speaks JSON on both sides itself: the client's request is
checked with the SDK's own functions, the upstream gets one POST (``wire``; in a pooled
session of the caller's for a session-based upstream), and its result is validated and
stamped as the SDK's client and server would.

Taken only when the SDK's modern entry would accept the request the same way: a POST with
a 2026-07-28 ``MCP-Protocol-Version``, an ``Accept`` naming JSON and SSE, no duplicated
routing header, the envelope ladder passed (``classify_inbound_request``), a well-formed
``tools/call`` with matching ``Mcp-Param-*`` headers, a tool in the virtual server's view,
and an HTTP upstream whose era is known. Anything else (legacy client sessions, stdio
upstreams, malformed requests, unknown tools) takes the SDK path, which answers exactly as
before. ``TETHER_MCP_EXPRESS=0`` sends everything that way.

The answer is JSON unless the upstream reports progress to a client that asked for it, or
the call runs past ``SSE_COMMIT_SECONDS``: then it becomes an SSE stream with keepalive
pings, as the SDK's modern entry does. A client that disconnects cancels the call, which
closes the upstream's POST (a session-based upstream also gets ``notifications/cancelled``)
and is audited ``cancelled``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as mcp_types
from anyio.streams.memory import MemoryObjectSendStream
from mcp import MCPError
from mcp.client.session import _later_revision_fields  # the SDK client's own rule (pinned SDK)
from mcp.server.runner import modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
    find_invalid_x_mcp_header,
    mcp_param_headers,
    validate_mcp_param_headers,
    x_mcp_header_map,
)
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp_types import methods as _methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request as HttpRequest
from starlette.types import Receive, Scope, Send

from gateway.mcp_gateway.catalog import Target
from gateway.mcp_gateway.context import RequestInfo
from gateway.mcp_gateway.tool_calls import CallContext
from gateway.mcp_gateway.virtual_server import (
    NOT_RELAYED,
    SDK_RESULTS,
    SERVER_INFO_KEY,
    Handlers,
    without_upstream_identity,
)
from gateway.mcp_gateway.wire import (
    Era,
    ProgressSink,
    SessionGone,
    Wire,
    exchange,
    request_headers,
    session_for,
)

SSE_COMMIT_SECONDS = 15.0
"""A silent call commits to SSE after this long, then pings this often (as the SDK does)."""
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
PING = b": ping\r\n\r\n"


@dataclass(frozen=True)
class ExpressCall:
    """A request the express lane may carry, as the client sent it."""

    request_id: str | int
    name: str
    arguments: dict[str, Any]
    progress_token: str | int | None
    protocol_version: str


def admit(scope: Scope, message: Mapping[str, Any]) -> ExpressCall | None:
    """The call, if the SDK's modern entry would accept ``message`` as the express lane serves it."""
    request = HttpRequest(scope)
    headers = request.headers
    if request.method != "POST" or headers.get("mcp-protocol-version") not in MODERN_PROTOCOL_VERSIONS:
        return None
    if message.get("method") != "tools/call" or message.get("jsonrpc") != "2.0":
        return None
    request_id, params = message.get("id"), message.get("params")
    if isinstance(request_id, bool) or not isinstance(request_id, str | int) or not isinstance(params, dict):
        return None
    name, arguments = params.get("name"), params.get("arguments", {})
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    has_json, has_sse = check_accept_headers(request)
    if not (has_json and has_sse):
        return None
    raw = ((key.decode("latin-1"), value.decode("latin-1")) for key, value in scope["headers"])
    if find_duplicated_routing_header(raw) is not None:
        return None
    route = classify_inbound_request(message, headers=dict(headers))
    if not isinstance(route, InboundModernRoute):
        return None
    token = params["_meta"].get("progressToken")
    if isinstance(token, bool) or not isinstance(token, str | int | None):
        return None
    return ExpressCall(request_id, name, arguments, token, route.protocol_version)


class Express:
    def __init__(
        self, handlers: Handlers, server_info: Callable[[], dict[str, Any]], client_info: dict[str, Any]
    ):
        self.handlers = handlers
        self.server_info = server_info
        self.client_info = client_info
        self._ids = itertools.count(1)
        self._header_maps: dict[int, tuple[mcp_types.Tool, dict[tuple[str, ...], str] | None]] = {}

    async def serve(
        self, call: ExpressCall, info: RequestInfo, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Carry ``call``; False (nothing sent) when it must take the SDK path after all."""
        request = CallContext.now(info, "tools/call", call.protocol_version)
        try:
            view = await self.handlers.view(info)
        except Exception:  # e.g. the store is down: the SDK path answers that as it always has
            return False
        entry = view.tools.get(call.name)
        if entry is None:
            return False  # the SDK path reports an unknown tool, with the same audit record
        target, tool = entry
        era = self.handlers.pool.era(target.upstream)
        if era is None:
            return False
        if _param_headers_mismatch(tool, call.arguments, scope):
            return False
        await _Exchange(scope, receive, send, call).run(
            lambda emit: self.handlers.tool_calls.run(
                request,
                view,
                call.name,
                call.arguments,
                lambda t: self._forward(info, t, tool, call, emit, era),
                SDK_RESULTS,
            ),
            self._finished,
        )
        return True

    async def _forward(
        self, info: RequestInfo, target: Target, tool: mcp_types.Tool, call: ExpressCall, emit: Emit, era: Era
    ) -> mcp_types.CallToolResult:
        request_id = next(self._ids)
        own_token = f"tether-{request_id}"
        meta: dict[str, Any] = {CLIENT_INFO_META_KEY: self.client_info, CLIENT_CAPABILITIES_META_KEY: {}}
        relay = None
        if call.progress_token is not None:
            meta["progressToken"] = own_token

            async def relay(params: dict[str, Any]) -> None:
                if (progress := _own_progress(params, own_token)) is not None:
                    await emit({"progressToken": call.progress_token, **progress})

        async def op(wire: Wire) -> mcp_types.CallToolResult:
            if wire.sessions is not None:
                return await self._in_session(wire, info, target, call, meta.get("progressToken"), relay)
            meta[PROTOCOL_VERSION_META_KEY] = wire.protocol_version
            params = {"name": target.name, "arguments": call.arguments, "_meta": meta}
            message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
            headers = request_headers(message, wire.protocol_version)
            header_map = self._header_map(tool)
            if header_map:
                headers.update(mcp_param_headers(header_map, call.arguments))
            return _parsed_result(
                await exchange(wire, message, headers, relay), wire.protocol_version, target.name
            )

        return await self.handlers.wire_upstream(info, target, op, era)

    async def _in_session(
        self,
        wire: Wire,
        info: RequestInfo,
        target: Target,
        call: ExpressCall,
        token: str | None,
        relay: ProgressSink | None,
    ) -> mcp_types.CallToolResult:
        """The call in a pooled session of a session-based upstream (``upstream_sessions``).

        A session the upstream forgot (404) is replaced once, by a new one (the caller's other
        idle sessions may be forgotten too): the call never ran in the forgotten one.
        """
        params: dict[str, Any] = {"name": target.name, "arguments": call.arguments}
        if token is not None:
            params["_meta"] = {"progressToken": token}
        for fresh in (False, True):
            try:
                async with session_for(wire, info.caller.id, self.client_info, fresh) as session:
                    request_id = next(session.ids)
                    message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
                    raw = await exchange(wire, message, {"content-type": "application/json"}, relay, session)
            except SessionGone:
                continue  # session_for left it out of the idle ones
            return _parsed_result(raw, session.protocol_version, target.name)
        raise MCPError(mcp_types.INVALID_REQUEST, "Session terminated")

    def _finished(self, result: mcp_types.CallToolResult, version: str) -> dict[str, Any]:
        """The result as the SDK's server would put it on the wire for a client at ``version``."""
        meta = without_upstream_identity(result.meta)
        dumped = result.model_copy(update={"meta": meta}).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )
        try:
            dumped = _methods.serialize_server_result("tools/call", version, dumped)
        except ValidationError:
            raise MCPError(mcp_types.INTERNAL_ERROR, "Handler returned an invalid result") from None
        dumped.setdefault("resultType", "complete")
        stamped = dumped.get("_meta")
        if stamped is None:
            dumped["_meta"] = {SERVER_INFO_KEY: self.server_info()}
        elif isinstance(stamped, dict) and stamped.get(SERVER_INFO_KEY) is None:
            dumped["_meta"] = {**stamped, SERVER_INFO_KEY: self.server_info()}
        return dumped

    def _header_map(self, tool: mcp_types.Tool) -> dict[tuple[str, ...], str] | None:
        cached = self._header_maps.get(id(tool))
        if cached is not None and cached[0] is tool:
            return cached[1]
        schema = tool.input_schema
        header_map = x_mcp_header_map(schema) if find_invalid_x_mcp_header(schema) is None else None
        if len(self._header_maps) > 4096:
            self._header_maps.clear()
        self._header_maps[id(tool)] = (tool, header_map)
        return header_map


def _param_headers_mismatch(tool: mcp_types.Tool, arguments: dict[str, Any], scope: Scope) -> bool:
    prefix = MCP_PARAM_HEADER_PREFIX.lower().encode()
    if not arguments and not any(key.startswith(prefix) for key, _ in scope["headers"]):
        return False
    return validate_mcp_param_headers(tool.input_schema, arguments, HttpRequest(scope).headers) is not None


def _parsed_result(raw: dict[str, Any], version: str, name: str) -> mcp_types.CallToolResult:
    """The upstream's result, validated as the SDK's client validates it (``forward_call``)."""
    if not (foreign := _later_revision_fields("tools/call", version)).isdisjoint(raw):
        raw = {key: value for key, value in raw.items() if key not in foreign}
    try:
        _methods.validate_server_result("tools/call", version, raw)
        return mcp_types.CallToolResult.model_validate(raw, by_name=False)
    except ValidationError:
        raise MCPError(mcp_types.INTERNAL_ERROR, NOT_RELAYED.format(name=name)) from None


def _own_progress(params: dict[str, Any], token: str) -> dict[str, Any] | None:
    """The progress fields the SDK relays, if ``params`` are a valid notification for ``token``."""
    try:
        progress = mcp_types.ProgressNotificationParams.model_validate(params, by_name=False)
    except ValidationError:
        return None
    if progress.progress_token != token:
        return None
    fields: dict[str, Any] = {"progress": progress.progress}
    if progress.total is not None:
        fields["total"] = progress.total
    if progress.message is not None:
        fields["message"] = progress.message
    return fields


Emit = Callable[[dict[str, Any]], Awaitable[None]]
"""Sends one ``notifications/progress`` (its params) to the client."""


class _Exchange:
    """One HTTP exchange with the client: JSON if the call answers quietly, else SSE."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, call: ExpressCall) -> None:
        self.scope, self.receive, self.send, self.call = scope, receive, send, call

    async def run(
        self,
        handler: Callable[[Emit], Awaitable[mcp_types.CallToolResult]],
        finished: Callable[[mcp_types.CallToolResult, str], dict[str, Any]],
    ) -> None:
        events, pending = anyio.create_memory_object_stream[bytes](0)
        reply: list[dict[str, Any]] = []

        async def answer(out: MemoryObjectSendStream[bytes]) -> None:
            async def emit(params: dict[str, Any]) -> None:
                note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}
                try:
                    await out.send(_event(note))
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass

            async with out:
                try:
                    result = finished(await handler(emit), self.call.protocol_version)
                    reply.append({"jsonrpc": "2.0", "id": self.call.request_id, "result": result})
                except Exception as exc:
                    error = modern_error_data(exc).model_dump(mode="json", by_alias=True, exclude_none=True)
                    reply.append({"jsonrpc": "2.0", "id": self.call.request_id, "error": error})

        async with pending, anyio.create_task_group() as tasks:
            tasks.start_soon(answer, events)
            tasks.start_soon(self._cancel_on_disconnect, tasks.cancel_scope)
            first: bytes | None = None
            answered = False
            with anyio.move_on_after(SSE_COMMIT_SECONDS):
                try:
                    first = await pending.receive()
                except anyio.EndOfStream:
                    answered = True
            if answered:  # sent outside the deadline, so it can never be cut and followed by SSE
                await self._json(reply[0])
                tasks.cancel_scope.cancel()
                return
            await self.send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            event: bytes | None = first
            while True:
                await self.send({"type": "http.response.body", "body": event or PING, "more_body": True})
                event = None
                with anyio.move_on_after(SSE_COMMIT_SECONDS):
                    try:
                        event = await pending.receive()
                    except anyio.EndOfStream:
                        break
            await self.send({"type": "http.response.body", "body": _event(reply[0]), "more_body": False})
            tasks.cancel_scope.cancel()

    async def _json(self, reply: dict[str, Any]) -> None:
        error = reply.get("error")
        status = ERROR_CODE_HTTP_STATUS.get(error["code"], 200) if error else 200
        body = json.dumps(reply, separators=(",", ":")).encode()  # ASCII, as the SDK writes it
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _cancel_on_disconnect(self, scope: anyio.CancelScope) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        scope.cancel()


def _event(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":"))  # ASCII, as the SDK writes it
    return f"event: message\r\ndata: {data}\r\n\r\n".encode()
