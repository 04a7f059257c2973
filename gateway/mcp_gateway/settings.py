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
| TETHER_MCP_EXPRESS                 | 1       | ``0`` sends every call through the MCP SDK, not the express lane |
| TETHER_MCP_JWT_SECRET              | derived | HS256 secret for gateway JWTs (default: derived from the vault master key) |
| TETHER_PUBLIC_URL                  | request | base URL advertised in ``WWW-Authenticate`` resource metadata |

Each is read through its declaration in ``gateway.settings``: an empty value (what compose's
``${VAR:-}`` passes) means the default, and a malformed one is a one-line ``ConfigError``
when the gateway starts (``from_env`` runs then), never in the middle of a call.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.settings import MCP_SETTINGS, PUBLIC_URL

MAX_MESSAGE_ENV = "TETHER_MCP_MAX_MESSAGE_BYTES"
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


_DECLARED = {setting.name: setting for setting in MCP_SETTINGS}


def _read(name: str, env: Mapping[str, str]) -> object:
    """``TETHER_MCP_NAME`` through its declaration: empty is the default, bad is a ``ConfigError``."""
    return _DECLARED[f"TETHER_MCP_{name}"].read(env)


def _int(name: str, env: Mapping[str, str]) -> int:
    value = _read(name, env)
    assert isinstance(value, int), name
    return value


def _float(name: str, env: Mapping[str, str]) -> float:
    value = _read(name, env)
    assert isinstance(value, int | float), name
    return float(value)


def _text(name: str, env: Mapping[str, str]) -> str | None:
    value = _read(name, env)
    return str(value) if value else None


def max_message_bytes(env: Mapping[str, str] | None = None) -> int:
    """The message limit; agent sessions read it here too, so both paths agree."""
    return max(1024, _int("MAX_MESSAGE_BYTES", os.environ if env is None else env))


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
    express: bool = True
    """Whether 2026-07-28 ``tools/call`` may take the express lane (``express``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> McpGatewaySettings:
        """Raises ``ConfigError`` (one line naming the variable) for a value it cannot use."""
        env = os.environ if env is None else env

        config, secret = _text("CONFIG", env), _text("JWT_SECRET", env)
        message = max_message_bytes(env)
        request = _read("MAX_REQUEST_BYTES", env)
        return cls(
            config_file=Path(config) if config else None,
            max_request_bytes=request if isinstance(request, int) else message,
            max_message_bytes=message,
            call_timeout=_float("CALL_TIMEOUT", env),
            rate_per_minute=_float("RATE_PER_MINUTE", env),
            rate_burst=_int("RATE_BURST", env),
            breaker_failures=_int("BREAKER_FAILURES", env),
            breaker_reset_seconds=_float("BREAKER_RESET_SECONDS", env),
            catalog_ttl=_float("CATALOG_TTL", env),
            registry_sync_seconds=_float("REGISTRY_SYNC_SECONDS", env),
            jwt_secret=secret.encode() if secret else None,
            public_url=PUBLIC_URL.read(env) or None,
            express=bool(_read("EXPRESS", env)),
        )
