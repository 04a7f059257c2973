"""Admission of one destination, and the log line every decision leaves.

``Gate.admit`` turns what a client asked for (a host and port from a request
line or ``CONNECT``) into a checked list of addresses to dial, or an
``HttpError`` the client gets back. Each allow, deny and failure is one line on
the ``tether.egress`` logger: a JSON object with the session id, method, host,
port, decision and reason, plus what the proxy did (``tls``: ``tunnel`` or
``intercept``) and which secrets it substituted (names only). Request paths,
headers and bodies are never logged.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Literal

from sandbox_server.egress.http import HttpError
from sandbox_server.egress.policy import EgressPolicy, Host, InvalidHost, IPAddress, parse_host
from sandbox_server.egress.resolve import Resolver

log = logging.getLogger("tether.egress")

Decision = Literal["allow", "deny", "error"]
_MAX_LOGGED_HOST = 255


@dataclass(frozen=True)
class Admission:
    """A destination that passed the policy, with the addresses it may be reached at."""

    host: Host
    port: int
    addresses: list[tuple[IPAddress, int]]
    reason: str


def split_authority(authority: str, default_port: int | None) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``host`` -> ``(host, port)``; 400 when malformed."""
    host, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise HttpError(400, "malformed authority")
        host, rest = authority[: end + 1], authority[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise HttpError(400, "malformed authority")
            port_text = rest[1:]
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
    if not port_text:
        if default_port is None:
            raise HttpError(400, "a port is required")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HttpError(400, "invalid port")
    return host, int(port_text)


class Gate:
    """The egress policy of one sandbox applied to real requests, with logging."""

    def __init__(self, policy: EgressPolicy, resolver: Resolver, session_id: str | None) -> None:
        self.policy = policy
        self.resolver = resolver
        self.session_id = session_id

    def record(
        self, method: str, host: str, port: int | None, decision: Decision, reason: str, **extra: Any
    ) -> None:
        """Log one decision as a single JSON line."""
        entry = {
            "event": "egress",
            "session": self.session_id,
            "method": method[:32],
            "host": host[:_MAX_LOGGED_HOST],
            "port": port,
            "decision": decision,
            "reason": reason,
            **extra,
        }
        log.info(json.dumps(entry, separators=(",", ":"), ensure_ascii=True))

    async def admit(self, method: str, host_text: str, port: int) -> Admission:
        """Check ``host_text:port`` and resolve it; raises ``HttpError`` (already logged) when refused."""
        try:
            host = parse_host(host_text)
        except InvalidHost as exc:
            self.record(method, host_text, port, "deny", f"invalid host: {exc}")
            raise HttpError(400, f"invalid host: {exc}") from None
        verdict = self.policy.check_host(host)
        if not verdict.allowed:
            self.record(method, host.name, port, "deny", verdict.reason)
            raise HttpError(403, f"egress to {host.name} is not allowed ({verdict.reason})")
        addresses = await self.resolver.resolve(host, port)
        checked = self.policy.check_addresses(host, [ip for ip, _ in addresses])
        if not checked.allowed:
            self.record(method, host.name, port, "deny", checked.reason)
            status = 502 if not addresses else 403
            raise HttpError(status, f"egress to {host.name} is not allowed ({checked.reason})")
        return Admission(host, port, addresses, verdict.reason)
