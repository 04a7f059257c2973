"""The resources behind ``tether environments|vaults|credentials|tunnels|webhooks|mcp-servers|
virtual-servers``: where each lives, its columns and its creation flags."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.commands.resources import Flag, Resource, add_operations, env_secret, register


def _archived(item: dict[str, Any]) -> str:
    return "yes" if item.get("archived_at") else ""


NAME = Flag("--name", "name", "its name")
DESCRIPTION = Flag("--description", "description", "a description")
METADATA = Flag("--metadata", "metadata", "a metadata entry KEY=VALUE", kind="metadata")
DISPLAY_NAME = Flag("--display-name", "display_name", "its display name")

ENVIRONMENTS = Resource(
    name="environments",
    noun="environment",
    help="where sessions run: cloud containers or self-hosted workers",
    sdk=lambda client: client.beta.environments,
    columns=[
        ("ID", lambda e: e["id"]),
        ("NAME", lambda e: e.get("name")),
        ("TYPE", lambda e: (e.get("config") or {}).get("type")),
        ("CREATED", lambda e: e.get("created_at")),
        ("ARCHIVED", _archived),
    ],
    flags=[
        NAME,
        DESCRIPTION,
        Flag(
            "--type",
            "config.type",
            "environment type: cloud (the gateway's sandbox) or self_hosted (an on-prem worker)",
        ),
        Flag("--config", "config", "the whole config as JSON (or @file.json)", kind="json"),
        METADATA,
    ],
    required=["name"],
)

VAULTS = Resource(
    name="vaults",
    noun="vault",
    help="vaults holding credentials for MCP servers (secrets are never printed)",
    sdk=lambda client: client.beta.vaults,
    columns=[
        ("ID", lambda v: v["id"]),
        ("NAME", lambda v: v.get("display_name")),
        ("CREATED", lambda v: v.get("created_at")),
        ("ARCHIVED", _archived),
    ],
    flags=[DISPLAY_NAME, METADATA],
    required=["display_name"],
)


def _bearer(url: str) -> dict[str, Any]:
    return {"auth": {"type": "static_bearer", "mcp_server_url": url}}


CREDENTIALS = Resource(
    name="credentials",
    noun="credential",
    help="credentials inside a vault (write-only: secrets are never printed)",
    sdk=lambda client: client.beta.vaults.credentials,
    parent="vault",
    redact=True,
    columns=[
        ("ID", lambda c: c["id"]),
        ("NAME", lambda c: c.get("display_name")),
        ("TYPE", lambda c: (c.get("auth") or {}).get("type")),
        ("MCP SERVER", lambda c: (c.get("auth") or {}).get("mcp_server_url")),
        ("ARCHIVED", _archived),
    ],
    flags=[
        DISPLAY_NAME,
        Flag("--bearer-for", "auth", "a static bearer token for this MCP server URL", build=_bearer),
        Flag(
            "--token-env",
            "auth.token",
            "the environment variable holding the bearer token (never pass a secret as a flag)",
            build=lambda name: {"auth": {"token": env_secret(name)}},
        ),
        METADATA,
    ],
    required=["auth"],
)

TUNNELS = Resource(
    name="tunnels",
    noun="tunnel",
    help="tunnels that on-prem agents dial to reach the gateway",
    sdk=lambda client: client.beta.tunnels,
    operations=("list", "show", "create", "archive"),
    columns=[
        ("ID", lambda t: t["id"]),
        ("NAME", lambda t: t.get("display_name")),
        ("DOMAIN", lambda t: t.get("domain")),
        ("CREATED", lambda t: t.get("created_at")),
        ("ARCHIVED", _archived),
    ],
    flags=[DISPLAY_NAME],
)

WEBHOOKS = Resource(
    name="webhooks",
    noun="webhook",
    help="webhook endpoints told of session status changes and outcome verdicts (Tether-only)",
    path="/v1/tether/webhooks",
    operations=("list", "show", "create", "delete"),
    columns=[
        ("ID", lambda w: w["id"]),
        ("URL", lambda w: w.get("url")),
        ("EVENTS", lambda w: ",".join(w.get("event_types") or []) or "all"),
        ("CREATED", lambda w: w.get("created_at")),
    ],
    flags=[
        Flag("--url", "url", "the http(s) URL to POST events to"),
        Flag("--event-type", "event_types", "only this event type (default: all of them)", kind="list"),
        DESCRIPTION,
        METADATA,
    ],
    required=["url"],
)


def _transport(url: str) -> dict[str, Any]:
    return {"transport": {"type": "url", "url": url}}


def _stdio(command: str) -> dict[str, Any]:
    return {"transport": {"type": "stdio", "command": command}}


def _health(server: dict[str, Any]) -> str:
    health = server.get("health") or {}
    breaker = (health.get("breaker") or {}).get("state")
    watch = health.get("watch") or {}
    connected = "connected" if watch.get("connected") else "not connected" if "connected" in watch else ""
    return ", ".join(part for part in (f"breaker {breaker}" if breaker else "", connected) if part)


MCP_SERVERS = Resource(
    name="mcp-servers",
    noun="MCP server",
    help="upstream MCP servers registered with the MCP gateway (Tether-only)",
    path="/v1/mcp_servers",
    operations=("list", "show", "create", "update", "delete"),
    columns=[
        ("ID", lambda s: s["id"]),
        ("NAME", lambda s: s.get("name")),
        (
            "TRANSPORT",
            lambda s: (s.get("transport") or {}).get("url") or (s.get("transport") or {}).get("command"),
        ),
        ("HEALTH", _health),
    ],
    flags=[
        NAME,
        Flag("--url", "transport", "the upstream's streamable-HTTP URL", build=_transport),
        Flag("--command", "transport", "run the upstream as this stdio command", build=_stdio),
        Flag("--arg", "transport.args", "an argument for --command", kind="list"),
        Flag("--vault", "vault_ids", "a vault whose credentials apply", kind="list"),
        METADATA,
    ],
    update_flags=[
        Flag("--url", "transport", "the upstream's streamable-HTTP URL", build=_transport),
        Flag("--vault", "vault_ids", "a vault whose credentials apply", kind="list"),
        METADATA,
    ],
    required=["name", "transport"],
)

VIRTUAL_SERVERS = Resource(
    name="virtual-servers",
    noun="virtual server",
    help="the MCP gateway's virtual servers, served at /mcp/NAME (Tether-only)",
    path="/v1/mcp_virtual_servers",
    operations=("list", "show", "create", "update", "delete"),
    columns=[
        ("ID", lambda s: s["id"]),
        ("NAME", lambda s: s.get("name")),
        ("SERVERS", lambda s: ",".join(str(x.get("server")) for x in s.get("servers") or [])),
        ("POLICY", lambda s: s.get("permission_policy")),
    ],
    flags=[
        NAME,
        DESCRIPTION,
        Flag(
            "--server",
            "servers",
            "expose every tool of this upstream server",
            kind="list",
            build=lambda names: {"servers": [{"server": name} for name in names]},
        ),
        Flag("--permission-policy", "permission_policy", "always_allow or always_ask"),
        METADATA,
    ],
    update_flags=[
        DESCRIPTION,
        Flag("--permission-policy", "permission_policy", "always_allow or always_ask"),
    ],
    required=["name", "servers"],
)


def register_all(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for resource in (ENVIRONMENTS, TUNNELS, WEBHOOKS, MCP_SERVERS, VIRTUAL_SERVERS):
        register(commands, resource)
    vaults = register(commands, VAULTS)
    credentials = vaults.add_parser("credentials", help=CREDENTIALS.help, description=CREDENTIALS.help)
    add_operations(
        credentials.add_subparsers(dest="credentials_command", required=True, metavar="COMMAND"), CREDENTIALS
    )
