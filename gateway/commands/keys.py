"""``tether keys list|show|create|update|revoke|rotate``: API keys with roles.

``create`` and ``rotate`` print the new token once (the gateway keeps only a hash of it);
``revoke`` archives a key, which refuses it at once; ``rotate`` creates a key with the same
name, role and scope, then revokes the old one.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

from gateway.commands.client import connection_flags, run
from gateway.commands.output import output_flags, print_item
from gateway.commands.resources import Flag, Resource, add_operations

PATH = "/v1/organizations/api_keys"
ROLES = "admin, developer, operator, reader or worker"

KEYS = Resource(
    name="keys",
    noun="key",
    help="API keys with roles (the token is shown once, at creation)",
    path=PATH,
    operations=("list", "show", "create", "update"),
    columns=[
        ("ID", lambda k: k["id"]),
        ("NAME", lambda k: k.get("name")),
        ("ROLE", lambda k: k.get("role")),
        ("SCOPE", lambda k: k.get("environment_id") or ""),
        ("STATUS", lambda k: k.get("status")),
        ("LAST USED", lambda k: k.get("last_used_at") or "never"),
    ],
    flags=[
        Flag("--name", "name", "its name"),
        Flag("--role", "role", f"what it may do: {ROLES}"),
        Flag("--environment", "environment_id", "a worker key's self-hosted environment"),
        Flag("--tunnel", "tunnel_id", "the tunnel a worker key may read (for tether tunnel --tunnel-id)"),
        Flag("--expires-at", "expires_at", "when it stops working (RFC 3339, e.g. 2027-01-31T00:00:00Z)"),
        Flag("--allow-ip", "allowed_ips", "an address range (CIDR) it may be used from", kind="list"),
        Flag("--agent", "agent_ids", "the only agent it may start sessions of and change", kind="list"),
    ],
    update_flags=[
        Flag("--name", "name", "a new name"),
        Flag("--status", "status", "active, inactive (paused) or archived (revoked)"),
    ],
    required=["name", "role"],
)


def keys_revoke(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    print_item(args, client.post(f"{PATH}/{args.id}", cast_to=object, body={"status": "archived"}))
    return 0


def keys_rotate(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    old: Any = client.get(f"{PATH}/{args.id}", cast_to=object)
    kept = ("name", "role", "environment_id", "tunnel_id", "expires_at", "allowed_ips", "agent_ids")
    body = {name: old[name] for name in kept if old.get(name)}
    created = client.post(PATH, cast_to=object, body=body)
    client.post(f"{PATH}/{args.id}", cast_to=object, body={"status": "archived"})
    print_item(args, created)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("keys", help=KEYS.help, description=KEYS.help)
    sub = parser.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    add_operations(sub, KEYS)
    for name, handler, text in (
        ("revoke", keys_revoke, "revoke a key: it is refused from now on"),
        ("rotate", keys_rotate, "replace a key by a new one with the same role and scope, revoking it"),
    ):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("id", metavar="KEY_ID", help="the key's id")
        output_flags(cmd)
        connection_flags(cmd)
        cmd.set_defaults(func=run(handler))
