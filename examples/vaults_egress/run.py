"""Vaults and egress: a credential the sandbox uses but never sees.

    .venv/bin/python examples/vaults_egress/run.py [--host httpbin.org]

1. A vault with an ``environment_variable`` credential ``API_TOKEN``, allowed for one host.
2. An environment whose egress allows that host only (``networking: limited``).
3. A session with the vault attached. In the sandbox ``$API_TOKEN`` holds a placeholder
   (``tether-ph-…``); the egress proxy, the sandbox's only way out, swaps the real value in
   on the last hop, only for requests to the credential's host over verified TLS, and scrubs
   it out of what comes back. A host outside the allow-list is refused.

The script then reads the whole session log through the SDK and checks that the secret is
in none of it. ``--host`` must serve ``GET /anything`` over HTTPS (httpbin.org does: it echoes
the request, so you can watch the header arrive and come back as the placeholder). Needs
bubblewrap on the gateway host (the commands run in ``bash``).

MCP servers get vault credentials the same way, on the last hop: a ``static_bearer`` or
``mcp_oauth`` credential whose ``mcp_server_url`` matches an agent's MCP server is added as
``Authorization`` by the gateway's MCP client.

What the model is asked to do: print ``$API_TOKEN``, call ``https://HOST/anything`` with it as
a bearer token, then try ``https://example.com``. The scripted model (no ``ANTHROPIC_API_KEY``)
is taught those three ``bash`` calls.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_common.py

from _common import MODEL, connect, describe, is_noise, teach, turn, user_message

MARKER = "Tether vaults and egress example."
OUTSIDE = "example.com"


def script(host: str) -> list[dict[str, Any]]:
    commands = [
        'echo "the sandbox sees API_TOKEN=$API_TOKEN"',
        f'curl -sS https://{host}/anything -H "Authorization: Bearer $API_TOKEN"; echo " exit=$?"',
        f'curl -sS https://{OUTSIDE}/ -o /dev/null; echo "{OUTSIDE} exit=$?"',
    ]
    turns: list[dict[str, Any]] = [
        {"content": [{"type": "tool_use", "name": "bash", "input": {"command": c}}]} for c in commands
    ]
    return [*turns, {"content": [{"type": "text", "text": "Done: the token worked without my seeing it."}]}]


def main() -> None:
    parser = argparse.ArgumentParser(description="A vault credential injected on the last hop.")
    parser.add_argument("--host", default="httpbin.org", help="the one host the session may reach")
    args = parser.parse_args()
    # The secret: yours in real life (EXAMPLE_API_TOKEN); here a fresh one, so we can hunt for it.
    secret = os.environ.get("EXAMPLE_API_TOKEN") or "sk_example_" + secrets.token_hex(16)
    print(f"secret fingerprint sha256:{hashlib.sha256(secret.encode()).hexdigest()[:16]}", flush=True)

    client = connect()
    teach(client, MARKER, script(args.host))
    vault = client.beta.vaults.create(display_name="example-api")
    client.beta.vaults.credentials.create(
        vault.id,
        auth={
            "type": "environment_variable",
            "secret_name": "API_TOKEN",
            "secret_value": secret,
            "networking": {"type": "limited", "allowed_hosts": [args.host]},
        },
    )
    environment = client.beta.environments.create(
        name="one-host",
        config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": [args.host]}},
    )
    agent = client.beta.agents.create(
        name="api-caller",
        model=MODEL,
        system=f"{MARKER} You call HTTP APIs with curl from bash. The API token is in $API_TOKEN.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[vault.id])
    ask = (
        f"Print $API_TOKEN, then call https://{args.host}/anything with it as a bearer token, "
        f"then try https://{OUTSIDE}/."
    )
    for event in turn(client, session.id, [user_message(ask)]):
        if not is_noise(event):
            print(describe(event), flush=True)

    logged = [event.model_dump(mode="json") for event in client.beta.sessions.events.list(session.id)]
    leaked = secret in json.dumps(logged)
    print(f"secret in the session log: {'YES' if leaked else 'no'} ({len(logged)} events checked)")
    print(f"session {session.id}")
    if leaked:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
