"""The decisions made for every call before it leaves the gateway: policy and limits.

Policy: the deployment's policy files (``policies.engine``) see the call as an MCP tool
call of the *upstream* server (``servers`` globs match the upstream's registry name,
``tools`` globs the tool's own name, never the exposed alias), combined with the virtual
server's ``permission_policy`` exactly as for agents. ``ask`` needs a human, and a call
through the MCP gateway has none to ask, so it is refused with a message saying so.

Limits: request size, per-call timeout and the rate limit come from the virtual server
(the timeout also from the upstream's registry entry), falling back to the gateway's
settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.mcp_gateway.settings import McpGatewaySettings
from gateway.store.base import Body
from policies.engine import PolicySet
from policies.rules import ToolCall


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    permission: str
    rule: str
    message: str | None = None


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int
    call_timeout: float
    rate_per_second: float
    burst: int


class Governance:
    def __init__(self, policies: PolicySet, settings: McpGatewaySettings) -> None:
        self.policies = policies
        self.settings = settings

    def decide(self, virtual_server: Body, upstream: str, tool: str, arguments: Mapping[str, Any]) -> Verdict:
        call = ToolCall(name=tool, kind="mcp", server=upstream, input=arguments)
        decision = self.policies.decide(call, virtual_server.get("permission_policy", "always_allow"))
        if decision.permission == "allow":
            return Verdict(True, "allow", decision.rule)
        if decision.permission == "deny":
            message = decision.message or f"Permission denied by {decision.rule}."
            return Verdict(False, "deny", decision.rule, message)
        reason = f": {decision.message}" if decision.message else ""
        return Verdict(
            False,
            "ask",
            decision.rule,
            f"Calling {tool!r} requires approval ({decision.rule}){reason}. Calls through the MCP "
            "gateway have no one to approve them, so this call was refused; an operator can allow "
            "it with a policy rule or the virtual server's permission_policy.",
        )

    def limits(self, virtual_server: Body, upstream: Body | None = None) -> Limits:
        """The virtual server's limits; the call timeout is the tighter of the virtual
        server's and the upstream's ``timeout_seconds``, else the gateway default."""
        settings = self.settings
        rate = virtual_server.get("rate_limit") or {}
        timeouts = [
            value
            for value in (virtual_server.get("call_timeout_seconds"), (upstream or {}).get("timeout_seconds"))
            if value
        ]
        return Limits(
            max_request_bytes=virtual_server.get("max_request_bytes") or settings.max_request_bytes,
            call_timeout=min(timeouts) if timeouts else settings.call_timeout,
            rate_per_second=float(rate.get("requests_per_minute", settings.rate_per_minute)) / 60.0,
            burst=int(rate.get("burst", settings.rate_burst)),
        )
