"""MCP gateway settings, read once from the environment.

| variable                           | default | meaning |
|------------------------------------|---------|---------|
| TETHER_MCP_CONFIG                  | unset   | JSON or YAML file of upstreams and virtual servers applied at start |
| TETHER_MCP_MAX_MESSAGE_BYTES       | 16 MiB  | largest MCP message (request body or a request's response body), for the gateway endpoint, its upstreams and agent sessions |
| TETHER_MCP_MAX_REQUEST_BYTES       | message | largest request body a virtual server accepts (overridable per server); defaults to the message limit |
| TETHER_MCP_CALL_TIMEOUT            | 60 s    | per-call timeout towards an upstream (overridable per server) |
| TETHER_MCP_RATE_PER_MINUTE         | 600     | calls per minute per caller and virtual server (overridable) |
| TETHER_MCP_RATE_BURST              | 60      | bucket size for that rate |
| TETHER_MCP_BREAKER_FAILURES        | 5       | consecutive failures that open an upstream's circuit |
| TETHER_MCP_BREAKER_RESET_SECONDS   | 30 s    | cool-down before a half-open probe |
| TETHER_MCP_CATALOG_TTL             | 300 s   | how long an upstream listing is trusted without a list_changed |
| TETHER_MCP_REGISTRY_SYNC_SECONDS   | 5 s     | how often the registry is re-read (changes made by other replicas) |
| TETHER_MCP_JWT_SECRET              | derived | HS256 secret for gateway JWTs (default: derived from the vault master key) |
| TETHER_PUBLIC_URL                  | request | base URL advertised in ``WWW-Authenticate`` resource metadata |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MAX_MESSAGE_ENV = "TETHER_MCP_MAX_MESSAGE_BYTES"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def max_message_bytes(env: Mapping[str, str] | None = None) -> int:
    """The message limit; agent sessions read it here too, so both paths agree."""
    env = os.environ if env is None else env
    return max(1024, int(env.get(MAX_MESSAGE_ENV, DEFAULT_MAX_MESSAGE_BYTES)))


@dataclass
class McpGatewaySettings:
    config_file: Path | None = None
    max_request_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Bound on an upstream's answer to one request (see ``sizing``)."""
    call_timeout: float = 60.0
    rate_per_minute: float = 600.0
    rate_burst: int = 60
    breaker_failures: int = 5
    breaker_reset_seconds: float = 30.0
    catalog_ttl: float = 300.0
    registry_sync_seconds: float = 5.0
    jwt_secret: bytes | None = None
    public_url: str | None = None
    listing_timeout: float = 30.0
    """Bound on one upstream listing (tools, resources, prompts) so a hung server cannot stall lists."""
    stdio_restart_max_seconds: float = 30.0
    session_idle_timeout: float = 30 * 60.0
    """Legacy (session-based) MCP sessions idle this long are closed."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> McpGatewaySettings:
        env = os.environ if env is None else env
        config = env.get("TETHER_MCP_CONFIG")
        secret = env.get("TETHER_MCP_JWT_SECRET")
        message = max_message_bytes(env)
        return cls(
            config_file=Path(config) if config else None,
            max_request_bytes=int(env.get("TETHER_MCP_MAX_REQUEST_BYTES", message)),
            max_message_bytes=message,
            call_timeout=float(env.get("TETHER_MCP_CALL_TIMEOUT", 60)),
            rate_per_minute=float(env.get("TETHER_MCP_RATE_PER_MINUTE", 600)),
            rate_burst=int(env.get("TETHER_MCP_RATE_BURST", 60)),
            breaker_failures=max(1, int(env.get("TETHER_MCP_BREAKER_FAILURES", 5))),
            breaker_reset_seconds=float(env.get("TETHER_MCP_BREAKER_RESET_SECONDS", 30)),
            catalog_ttl=float(env.get("TETHER_MCP_CATALOG_TTL", 300)),
            registry_sync_seconds=float(env.get("TETHER_MCP_REGISTRY_SYNC_SECONDS", 5)),
            jwt_secret=secret.encode() if secret else None,
            public_url=(env.get("TETHER_PUBLIC_URL") or None),
        )
