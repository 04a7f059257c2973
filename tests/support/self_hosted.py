"""A real ``tether tunnel`` agent in worker mode, and ways to watch what it runs on-prem."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx2

from tests.support.processes import ServerProcess, start_server

T = TypeVar("T")


def start_worker_agent(
    gateway_url: str,
    token: str,
    api_key: str,
    environment_id: str,
    workspaces: Path,
    agent_id: str,
    *,
    tunnel_domain: str | None = None,
    tunnel_id: str | None = None,
    lease_ttl: int = 5,
    heartbeat_interval: float = 0.25,
) -> ServerProcess:
    """No ``--config``: the agent's only routes are the sandboxes it starts. Secrets travel in
    the environment, never in argv. ``api_key`` (an admin's) only mints the agent's worker key."""
    args = [
        "--gateway",
        gateway_url,
        "--agent-id",
        agent_id,
        "--connections",
        "1",
        "--admin-port",
        "0",
        "--ping-interval",
        "0.2",
        "--ping-timeout",
        "1.0",
        "--backoff-base",
        "0.05",
        "--backoff-max",
        "0.5",
        "--environment",
        environment_id,
        "--workspaces",
        str(workspaces),
        "--lease-ttl",
        str(lease_ttl),
        "--heartbeat-interval",
        str(heartbeat_interval),
    ]
    args += ["--tunnel-domain", tunnel_domain] if tunnel_domain else ["--tunnel-id", str(tunnel_id)]
    key = worker_key(gateway_url, api_key, environment_id, tunnel_id)
    env = {"TETHER_TUNNEL_TOKEN": token, "TETHER_API_KEY": key}
    return start_server(args, env, module="tunnel_agent")


def worker_key(gateway_url: str, admin_key: str, environment_id: str, tunnel_id: str | None = None) -> str:
    """A key that serves only ``environment_id`` (and reads ``tunnel_id``), as an operator
    would hand to an on-prem host."""
    body = {"name": f"worker {environment_id}", "role": "worker", "environment_id": environment_id}
    if tunnel_id:
        body["tunnel_id"] = tunnel_id
    response = httpx2.post(
        f"{gateway_url}/v1/organizations/api_keys", headers={"x-api-key": admin_key}, json=body, timeout=30
    )
    response.raise_for_status()
    return str(response.json()["key"])


def sandbox_pids(workspaces: Path) -> dict[str, int]:
    """Session id -> pid of each live ``tether sandbox`` whose workspace is under ``workspaces``
    (read from /proc, so it sees exactly what the agent started)."""
    found: dict[str, int] = {}
    prefix = str(workspaces) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or "sandbox" not in args or "--workspace" not in args:
            continue
        workspace = args[args.index("--workspace") + 1]
        if workspace.startswith(prefix):
            found[workspace[len(prefix) :]] = int(entry.name)
    return found


def agent_metric(agent: ServerProcess, series: str) -> float:
    """One series from the agent's ``/metrics``, e.g. ``name{label="value"}`` (0 when absent)."""
    text = httpx2.get(agent.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


def eventually(check: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Re-check an observable condition until it holds; fail with ``what`` at the deadline.

    This waits for a state to become true (a process exiting, a heartbeat landing), never for
    a fixed time: the check decides, the interval only bounds the cost of asking.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
