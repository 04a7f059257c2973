"""The split deployment on one machine: a gateway here, a worker "on-prem", tools run there.

    .venv/bin/tether gateway --port 8420 --data-dir .tether          # the gateway (another terminal)
    .venv/bin/python examples/split_deployment/run.py

Plays both sides of ``README.md`` in this folder, in order:

1. Operator, through the SDK: ``tunnels.create`` (the tunnel gets a unique ``domain``),
   ``tunnels.reveal_token`` (the token the on-prem agent dials with), and an environment with
   ``config={"type": "self_hosted"}``.
2. On-prem: starts ``inventory_server.py`` (a private MCP server), writes a ``tunnel.yaml``
   routing ``inventory.<domain>`` to it with a bearer token added on the last hop, and starts
   ``tether tunnel`` as the environment's worker (``--environment``, ``--tunnel-id``, and a
   worker key for that environment in ``TETHER_API_KEY``: an admin key is refused).
3. A session in that environment: its agent toolset runs in a sandbox the worker starts, and
   its MCP server ``http://inventory.<domain>/mcp`` is reached through the tunnel.

What the model is asked to do: look up how many widgets are in stock with the inventory's
``stock`` tool and write the answer to ``/workspace/stock.txt``. The scripted model (no
``ANTHROPIC_API_KEY``) is taught those two calls. Prints where the file landed on-prem, then
stops what it started (the session's sandbox stops with the worker). ``--workspaces DIR``
keeps the worker's workspaces there.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_common.py

from _common import MODEL, connect, describe, gateway_url, is_noise, teach, turn, user_message

HERE = Path(__file__).resolve().parent
MARKER = "Tether split deployment example."
SYSTEM = f"{MARKER} You keep stock reports. Use the inventory tools, then write files in /workspace."
SCRIPT: list[dict[str, Any]] = [
    {"content": [{"type": "tool_use", "name": "stock", "input": {"item": "widgets"}}]},
    {
        "content": [
            {
                "type": "tool_use",
                "name": "write",
                "input": {"file_path": "/workspace/stock.txt", "content": "{{last_tool_result}}\n"},
            }
        ]
    },
    {"content": [{"type": "text", "text": "Stock report written on-prem."}]},
]
START_TIMEOUT = 60.0


@contextmanager
def started(args: list[str], env: dict[str, str], name: str) -> Iterator[str]:
    """Run a child until the block ends; yields the URL from its ``listening on URL`` line."""
    child = subprocess.Popen(
        args, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert child.stdout is not None
        for line in child.stdout:  # the first lines: logs until the ready line
            if line.startswith("listening on "):
                break
            print(f"  [{name}] {line.rstrip()}", flush=True)
        else:
            raise SystemExit(f"{name} exited before it was ready (status {child.wait()})")
        yield line.removeprefix("listening on ").strip()
    finally:
        child.terminate()
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def wait_ready(admin_url: str) -> None:
    """The worker's ``/ready`` answers 200 once a tunnel connection is up."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(admin_url + "/ready", timeout=5):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise SystemExit("the tunnel agent did not connect to the gateway") from None
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a session whose tools run on an on-prem worker.")
    parser.add_argument("--workspaces", help="the worker's workspaces (default: a temporary directory)")
    options = parser.parse_args()
    client = connect()
    teach(client, MARKER, SCRIPT)

    # 1. The operator's side.
    tunnel = client.beta.tunnels.create(display_name="site-a")
    token = client.beta.tunnels.reveal_token(tunnel.id).tunnel_token
    environment = client.beta.environments.create(name="site-a", config={"type": "self_hosted"})
    print(f"tunnel {tunnel.id} domain {tunnel.domain}; environment {environment.id}", flush=True)
    # The on-prem host's key: it serves this environment only (`tether keys create --role worker`).
    worker_key: Any = client.post(
        "/v1/organizations/api_keys",
        cast_to=object,
        body={"name": "site-a", "role": "worker", "environment_id": environment.id, "tunnel_id": tunnel.id},
    )

    # 2. On-prem: a private MCP server, the tunnel agent's routes, the agent as worker.
    scratch = Path(tempfile.mkdtemp(prefix="tether-split-"))
    workspaces = Path(options.workspaces or scratch / "workspaces").resolve()
    inventory_token = secrets.token_urlsafe(24)  # an on-prem secret: stays on this side
    python = sys.executable
    with started(
        [python, str(HERE / "inventory_server.py"), "--port", "0"],
        {"INVENTORY_TOKEN": inventory_token},
        "inventory",
    ) as inventory_url:
        target = inventory_url.removesuffix("/mcp")
        config = scratch / "tunnel.yaml"
        config.write_text(
            "routes:\n"
            "  - subdomain: inventory\n"
            f"    target: {target}\n"
            "    headers:\n"
            '      Authorization: "Bearer ${INVENTORY_TOKEN}"\n'
        )
        worker_args = [
            *(python, "-m", "gateway.cli", "tunnel"),  # `tether tunnel`, with this Python
            *("--gateway", gateway_url(), "--config", str(config)),
            *("--environment", environment.id, "--tunnel-id", tunnel.id),
            *("--workspaces", str(workspaces), "--agent-id", "site-a-worker", "--admin-port", "0"),
        ]
        secrets_env = {
            "TETHER_TUNNEL_TOKEN": token,
            "TETHER_API_KEY": worker_key["key"],
            "INVENTORY_TOKEN": inventory_token,
        }
        with started(worker_args, secrets_env, "tunnel agent") as admin_url:
            wait_ready(admin_url)
            print(f"worker connected; workspaces in {workspaces}", flush=True)

            # 3. A session in the self-hosted environment.
            agent = client.beta.agents.create(
                name="stock-keeper",
                model=MODEL,
                system=SYSTEM,
                mcp_servers=[
                    {"type": "url", "name": "inventory", "url": f"http://inventory.{tunnel.domain}/mcp"}
                ],
                tools=[
                    {"type": "agent_toolset_20260401"},
                    {
                        "type": "mcp_toolset",
                        "mcp_server_name": "inventory",
                        "default_config": {"permission_policy": {"type": "always_allow"}},
                    },
                ],
            )
            session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
            ask = "How many widgets are in stock? Write the answer to /workspace/stock.txt."
            for event in turn(client, session.id, [user_message(ask)]):
                if not is_noise(event):
                    print(describe(event), flush=True)
            # As root the worker mounts each workspace from an image (DIR/SESSION.img) in a mount
            # namespace of its own; unprivileged, the file is plainly there.
            print(f"on-prem workspace: {workspaces / session.id}", flush=True)
            print(f"session {session.id}", flush=True)


if __name__ == "__main__":
    main()
