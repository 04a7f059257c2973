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

import anyio

from gateway import ids
from gateway.mcp_gateway.access import Caller
from gateway.store.base import Body, Page, Store

log = logging.getLogger("tether.mcp_gateway")

KIND = "mcp_audit"
PREFIX = "mcpaud"
FILTERS = ("virtual_server", "outcome", "tool", "upstream", "caller.id")
COMMIT_TIMEOUT = 10.0
"""How long one batch may take to commit before its records are given up on (logged)."""


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


def _printable(text: str | None) -> str | None:
    """Without NUL, which PostgreSQL's jsonb refuses (a client may put one in a tool name)."""
    return text.replace("\x00", "") if text else text


@dataclass
class _Queued:
    body: Body
    committed: bool = False
    """Written, or given up on (a failed batch is logged, never retried)."""


class AuditLog:
    """Records are written before the call's answer is sent, and calls in flight together
    share one commit: whoever finds no batch being written writes every record queued so
    far with ``Store.insert_many`` (one transaction, one fsync) and returns; records queued
    meanwhile wait for that batch to end, then one of them writes the next."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queued: list[_Queued] = []
        self._writing = False
        self._batch_done = anyio.Event()

    async def record(self, call: CallRecord) -> Body:
        body: Body = {
            "type": "mcp_audit_record",
            "id": ids.new_id(PREFIX),
            "created_at": ids.timestamp(),
            "caller": call.caller.to_json(),
            "virtual_server": call.virtual_server,
            "method": call.method,
            "tool": _printable(call.tool),
            "upstream": call.upstream,
            "upstream_tool": call.upstream_tool,
            "arguments_sha256": digest(call.arguments) if call.arguments is not None else None,
            "outcome": call.outcome,
            "detail": _printable((call.detail or None) and call.detail[:500]),
            "latency_ms": round(call.latency_ms, 3),
            "protocol_version": call.protocol_version,
        }
        # Shielded: a caller that goes away still leaves its record (and writes the batch it leads).
        with anyio.CancelScope(shield=True):
            await self._write(_Queued(body))
        return body

    async def _write(self, entry: _Queued) -> None:
        """Wait until ``entry`` is committed, writing a batch if no one else is writing."""
        self._queued.append(entry)
        while not entry.committed:
            if self._writing:
                await self._batch_done.wait()
                continue
            self._writing = True
            batch, self._queued = self._queued, []
            try:
                await self._commit([queued.body for queued in batch])
            finally:
                for queued in batch:
                    queued.committed = True
                self._writing = False
                done, self._batch_done = self._batch_done, anyio.Event()
                done.set()  # the writer of the next batch comes from those still waiting

    async def _commit(self, bodies: list[Body]) -> None:
        """One transaction for the batch; if the store refuses it, each record on its own (one bad
        record must not take the others down). Bounded: a hung store gives up, loudly."""
        with anyio.move_on_after(COMMIT_TIMEOUT) as bound:
            try:
                await self.store.insert_many(KIND, bodies)
                return
            except Exception:
                if len(bodies) == 1:
                    log.exception("could not store the MCP audit record %s", bodies[0]["id"])
                    return
            for body in bodies:
                try:
                    await self.store.insert(KIND, body)
                except Exception:
                    # The call already happened; losing its record must be loud, never silent.
                    log.exception("could not store the MCP audit record %s", body["id"])
        if bound.cancelled_caught:
            log.error(
                "gave up storing MCP audit records after %gs: %s", COMMIT_TIMEOUT, [b["id"] for b in bodies]
            )

    async def query(self, filters: dict[str, str], cursor: int | None, limit: int) -> Page:
        return await self.store.list_resources(
            KIND, cursor=cursor, limit=limit, include_archived=True, equals=filters
        )
