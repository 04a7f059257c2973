"""One audit record per MCP call through the gateway, stored as a Store document.

Records say who called (API key id or JWT subject), which virtual server, which tool
(exposed name, upstream and the upstream's own name), a SHA-256 digest of the arguments
(canonical JSON: sorted keys, no whitespace, UTF-8), the outcome and the latency. The
arguments themselves are never stored: they may hold personal data or secrets, and the
digest is enough to prove what was sent when the caller still has the arguments.

Outcomes: ``ok``, ``tool_error`` (the tool answered ``is_error``), ``error`` (the upstream
answered a protocol error), ``denied`` (policy), ``not_found`` (unknown tool, prompt or resource), ``unavailable``
(unreachable upstream or open circuit), ``timeout``, ``rate_limited``, ``too_large``
(over the message limit, or an upstream's 413), ``cancelled`` (the client cancelled).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from gateway import ids
from gateway.mcp_gateway.access import Caller
from gateway.store.base import Body, Page, Store

log = logging.getLogger("tether.mcp_gateway")

KIND = "mcp_audit"
PREFIX = "mcpaud"
FILTERS = ("virtual_server", "outcome", "tool", "upstream", "caller.id")


def digest(arguments: Any) -> str:
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: whatever a client managed to send is digested, never a reason to lose the record.
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class CallRecord:
    caller: Caller
    virtual_server: str
    method: str
    tool: str | None
    upstream: str | None
    upstream_tool: str | None
    arguments: Any
    outcome: str
    latency_ms: float
    detail: str | None = None
    protocol_version: str | None = None


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def record(self, call: CallRecord) -> Body:
        body: Body = {
            "type": "mcp_audit_record",
            "id": ids.new_id(PREFIX),
            "created_at": ids.timestamp(),
            "caller": call.caller.to_json(),
            "virtual_server": call.virtual_server,
            "method": call.method,
            "tool": call.tool,
            "upstream": call.upstream,
            "upstream_tool": call.upstream_tool,
            "arguments_sha256": digest(call.arguments) if call.arguments is not None else None,
            "outcome": call.outcome,
            "detail": (call.detail or None) and call.detail[:500],
            "latency_ms": round(call.latency_ms, 3),
            "protocol_version": call.protocol_version,
        }
        try:
            await self.store.insert(KIND, body)
        except Exception:
            # The call already happened; losing its record must be loud, never silent.
            log.exception("could not store the MCP audit record %s", body["id"])
        return body

    async def query(self, filters: dict[str, str], cursor: int | None, limit: int) -> Page:
        return await self.store.list_resources(
            KIND, cursor=cursor, limit=limit, include_archived=True, equals=filters
        )
