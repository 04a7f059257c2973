"""REST request bodies for upstream servers, virtual servers and gateway tokens.

Names are restricted so they can appear in URLs (``/mcp/{name}``), in namespaced tool
names (``server__tool``) and in JWT scopes (``mcp:{name}``) without escaping.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from gateway.schemas.common import Metadata, MetadataPatch, Strict

SERVER_NAME = r"^[a-zA-Z0-9_-]{1,32}$"
"""Upstream names are short: they prefix colliding tool names, which must fit in 64 characters."""
VIRTUAL_SERVER_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

PermissionPolicy = Literal["always_allow", "always_ask", "auto"]
VaultIds = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=16)]


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    return url


def _env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if "\x00" in value or len(value) > 16_384:
            raise ValueError(f"value of {key} must be at most 16384 characters without NUL")
    return env


class UrlTransport(Strict):
    """A streamable HTTP MCP server (possibly on a tunnelled host)."""

    type: Literal["url"]
    url: Annotated[str, Field(max_length=2048), AfterValidator(_http_url)]


class StdioTransport(Strict):
    """A command the gateway launches and supervises, speaking MCP on stdin/stdout.

    ``env`` values are secrets as far as the API is concerned: stored encrypted, never
    returned (responses list the variable names only).
    """

    type: Literal["stdio"]
    command: Annotated[str, Field(min_length=1, max_length=4096)]
    args: Annotated[list[Annotated[str, Field(max_length=16_384)]], Field(max_length=256)] = Field(
        default_factory=list
    )
    env: Annotated[dict[str, str], Field(max_length=128), AfterValidator(_env)] = Field(default_factory=dict)
    cwd: Annotated[str, Field(min_length=1, max_length=4096)] | None = None


Transport = Annotated[UrlTransport | StdioTransport, Field(discriminator="type")]
Timeout = Annotated[float, Field(gt=0, le=3600)]


class McpServerCreate(Strict):
    name: Annotated[str, Field(pattern=SERVER_NAME)]
    transport: Transport
    vault_ids: VaultIds = Field(default_factory=list)
    """Credentials for the gateway's own background connection (list_changed, listings)."""
    timeout_seconds: Timeout | None = None
    metadata: Metadata = Field(default_factory=dict)


class McpServerUpdate(Strict):
    transport: Transport | None = None
    vault_ids: VaultIds | None = None
    timeout_seconds: Timeout | None = None
    metadata: MetadataPatch | None = None


class Selection(Strict):
    """Which of one upstream's offerings a virtual server exposes."""

    server: Annotated[str, Field(pattern=SERVER_NAME)]
    tools: Annotated[list[Annotated[str, Field(min_length=1, max_length=256)]], Field(max_length=256)] = (
        Field(default_factory=lambda: ["*"])
    )
    """Shell-style globs over the upstream's own tool names; ``[]`` exposes no tools."""
    resources: bool = True
    prompts: bool = True


class RateLimit(Strict):
    requests_per_minute: Annotated[float, Field(gt=0, le=1_000_000)]
    burst: Annotated[int, Field(ge=1, le=100_000)]


def _unique_servers(selections: list[Selection]) -> list[Selection]:
    names = [selection.server for selection in selections]
    if len(set(names)) != len(names):
        raise ValueError("each server may be selected once")
    return selections


Selections = Annotated[list[Selection], Field(min_length=1, max_length=64), AfterValidator(_unique_servers)]


class VirtualServerCreate(Strict):
    name: Annotated[str, Field(pattern=VIRTUAL_SERVER_NAME)]
    description: Annotated[str, Field(max_length=2048)] = ""
    servers: Selections
    vault_ids: VaultIds = Field(default_factory=list)
    """Vaults whose credentials are added on the last hop to the selected URL upstreams."""
    permission_policy: PermissionPolicy = "always_allow"
    """The base decision the policy files tighten; ``ask`` has no one to ask here, so it denies."""
    rate_limit: RateLimit | None = None
    max_request_bytes: Annotated[int, Field(ge=256, le=64 * 1024 * 1024)] | None = None
    call_timeout_seconds: Timeout | None = None
    metadata: Metadata = Field(default_factory=dict)


class VirtualServerUpdate(Strict):
    description: Annotated[str, Field(max_length=2048)] | None = None
    servers: Selections | None = None
    vault_ids: VaultIds | None = None
    permission_policy: PermissionPolicy | None = None
    rate_limit: RateLimit | None = None
    max_request_bytes: Annotated[int, Field(ge=256, le=64 * 1024 * 1024)] | None = None
    call_timeout_seconds: Timeout | None = None
    metadata: MetadataPatch | None = None


class TokenCreate(Strict):
    virtual_servers: Annotated[
        list[Annotated[str, Field(pattern=r"^([a-zA-Z0-9_-]{1,64}|\*)$")]], Field(min_length=1, max_length=64)
    ]
    """Virtual server names the token may reach; ``*`` means all of them."""
    subject: Annotated[str, Field(min_length=1, max_length=256)]
    """Who the token is for; recorded as the caller in the audit log."""
    expires_in: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 3600
