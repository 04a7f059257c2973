"""A governed ``tools/call``, the same whichever lane carries it.

Both the SDK's handler (``virtual_server``) and the express lane (``express``) run a call
through ``ToolCalls.run``, in order: lookup by exposed name (unknown: ``INVALID_PARAMS``),
the policy decision (refusal: an ``is_error`` result carrying the reason, so a model can
read it), then the lane's own ``forward`` to the upstream. An unreachable upstream, an open
circuit or a timeout is an ``is_error`` result naming the upstream and the reason; an
upstream's own protocol error passes through unchanged; an answer over the message limit
(or an upstream's 413) is a JSON-RPC error naming the limit. A call the client cancels is
audited ``cancelled``. Every call, whatever its fate, leaves one audit record.

The lanes differ only in how a result looks (an SDK model, or the wire's JSON), which
``ResultShape`` abstracts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import mcp.types as mcp_types
from mcp import MCPError

from gateway.mcp_gateway.audit import AuditLog, CallRecord
from gateway.mcp_gateway.catalog import Target, View
from gateway.mcp_gateway.context import RequestInfo
from gateway.mcp_gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.mcp_gateway.governance import Governance
from gateway.mcp_gateway.sizing import MessageTooLarge

R = TypeVar("R")


@dataclass(frozen=True)
class ResultShape(Generic[R]):
    """How one lane builds an ``is_error`` result and reads one."""

    error: Callable[[str], R]
    is_error: Callable[[R], bool]


@dataclass(frozen=True)
class CallContext:
    """One MCP request as the audit log records it."""

    info: RequestInfo
    method: str
    protocol_version: str | None
    started: float

    @classmethod
    def now(cls, info: RequestInfo, method: str, protocol_version: str | None) -> CallContext:
        return cls(info, method, protocol_version, time.perf_counter())


def too_large_error(what: str, exc: MessageTooLarge) -> MCPError:
    return MCPError(mcp_types.INTERNAL_ERROR, f"{what} failed: {exc}")


class ToolCalls:
    def __init__(self, governance: Governance, audit: AuditLog) -> None:
        self.governance = governance
        self.audit = audit

    async def record(
        self,
        request: CallContext,
        outcome: str,
        name: str | None,
        target: Target | None,
        arguments: Any,
        detail: str | None = None,
    ) -> None:
        await self.audit.record(
            CallRecord(
                caller=request.info.caller,
                virtual_server=request.info.virtual_server["name"],
                method=request.method,
                tool=name,
                upstream=target.upstream if target else None,
                upstream_tool=target.name if target else None,
                arguments=arguments,
                outcome=outcome,
                latency_ms=(time.perf_counter() - request.started) * 1000,
                detail=detail,
                protocol_version=request.protocol_version,
            )
        )

    async def run(
        self,
        request: CallContext,
        view: View,
        name: str,
        arguments: dict[str, Any],
        forward: Callable[[Target], Awaitable[R]],
        shape: ResultShape[R],
    ) -> R:
        """The call's result; raises ``MCPError`` for what is a protocol error (module doc)."""
        entry = view.tools.get(name)
        if entry is None:
            down = "; ".join(f"{upstream}: {why}" for upstream, why in sorted(view.unavailable.items()))
            detail = f"Unknown tool: {name}" + (f" (unavailable upstreams: {down})" if down else "")
            await self.record(request, "not_found", name, None, arguments, detail)
            raise MCPError(mcp_types.INVALID_PARAMS, detail)
        target = entry[0]
        verdict = self.governance.decide(request.info.virtual_server, target.upstream, target.name, arguments)
        if not verdict.allowed:
            await self.record(request, "denied", name, target, arguments, verdict.rule)
            return shape.error(verdict.message or "Permission denied.")
        try:
            result = await forward(target)
        except UpstreamTimeout as exc:
            await self.record(request, "timeout", name, target, arguments, str(exc))
            return shape.error(f"Tool {name!r} failed: upstream server {target.upstream!r} {exc}.")
        except UpstreamUnavailable as exc:
            await self.record(request, "unavailable", name, target, arguments, str(exc))
            return shape.error(
                f"Tool {name!r} is unavailable: upstream server {target.upstream!r} cannot be "
                f"reached ({exc}). Try again later."
            )
        except MessageTooLarge as exc:
            await self.record(request, "too_large", name, target, arguments, str(exc))
            raise too_large_error(f"Tool {name!r}", exc) from None
        except anyio.get_cancelled_exc_class():
            # The audit shields itself (and bounds its commit): the record is written anyway.
            await self.record(request, "cancelled", name, target, arguments, "the client cancelled the call")
            raise
        except MCPError as exc:
            await self.record(request, "error", name, target, arguments, str(exc))
            raise
        except Exception as exc:  # e.g. the store down while the credential was looked up
            await self.record(request, "error", name, target, arguments, type(exc).__name__)
            raise
        outcome = "tool_error" if shape.is_error(result) else "ok"
        await self.record(request, outcome, name, target, arguments)
        return result
