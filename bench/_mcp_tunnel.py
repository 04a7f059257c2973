"""The processes ``bench/mcp_gateway.py`` measures: two MCP upstreams, a gateway, and a
tunnel agent, each a real process on loopback.

* ``dual``: ``tests.support.mcp_gateway_upstream`` serving both protocol eras;
* ``session``: the same server with ``--legacy-only`` (session-based, 2025-11-25 only);
* the gateway: ``python -m gateway.cli gateway`` (``tether gateway``), i.e. the app as
  shipped, whose MCP gateway reaches tunnel hosts through the tunnel hub. (The tests'
  ``mcp_gateway_launcher`` is not used: it wires a second MCP gateway over the app's own,
  without the hub's transport, so tunnel URLs would not resolve through it.) The sandbox
  warm pool is off (``TETHER_SANDBOX_WARM_POOL=0``) so no idle sandbox shares the CPU;
* the agent: ``python -m tunnel_agent`` (``tether tunnel``) with two connections to the
  gateway and one route per upstream, so ``http://dual.<domain>/mcp`` and
  ``http://session.<domain>/mcp`` reach the upstreams through the tunnel.

The gateway knows each upstream twice, by its loopback URL and by its tunnel URL, plus the
stdio server of the tests, and has one virtual server per path (``VIRTUAL``).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from tests.support.mcp_gateway_stack import POLICY, start_upstream, stdio_transport
from tests.support.processes import ServerProcess, start_server
from tests.support.tunnel_agents import start_agent, write_config

AGENT_CONNECTIONS = 2
READY_TIMEOUT = 30.0

VIRTUAL = {
    "dual": "bench",
    "dual-tunnel": "bench-tunnel",
    "session": "bench-session",
    "session-tunnel": "bench-session-tunnel",
}
"""Virtual server per upstream path; ``bench`` also selects the stdio server (``local``)."""


@dataclass
class BenchStack:
    gateway: ServerProcess
    api_key: str
    dual: ServerProcess
    session: ServerProcess
    agent: ServerProcess
    tunnel_domain: str

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key}

    def mcp_url(self, path: str) -> str:
        """The gateway's ``/mcp/{name}`` for a key of ``VIRTUAL``."""
        return f"{self.gateway.url}/mcp/{VIRTUAL[path]}"


def _post(http: httpx2.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    if response.status_code != 200:
        raise RuntimeError(f"POST {path}: {response.status_code} {response.text}")
    result: dict[str, Any] = response.json()
    return result


def _wait_for_agent(agent: ServerProcess, connections: int) -> None:
    """Poll the agent's own ``/ready`` (its admin URL) until all its links are up."""
    deadline = time.monotonic() + READY_TIMEOUT
    seen: object = None
    while time.monotonic() < deadline:
        if agent.process.poll() is not None:
            break
        try:
            seen = httpx2.get(agent.url + "/ready", timeout=5).json()
        except httpx2.HTTPError as exc:
            seen = exc
        if isinstance(seen, dict) and seen.get("connections", 0) >= connections:
            return
        time.sleep(0.05)
    raise RuntimeError(f"tunnel agent not connected ({seen!r}):\n" + "\n".join(agent.output))


def _children() -> set[int]:
    """This process's child processes, from each process's parent id in ``/proc``."""
    me, found = os.getpid(), set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(entry.name))
    return found


def _start(processes: ExitStack, start: Callable[[], ServerProcess]) -> ServerProcess:
    """``start()``, its process stopped when ``processes`` closes; a start interrupted before
    it returns (Ctrl-C while it waits for the ready line) leaves no child behind either."""
    before = _children()
    try:
        server = start()
    except BaseException:
        for pid in _children() - before:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        raise
    processes.callback(server.stop)
    return server


@contextmanager
def running_stack(workdir: Path, gateway_env: dict[str, str] | None = None) -> Iterator[BenchStack]:
    """Everything started, registered and connected; every process stopped on the way out,
    also when a start or a registration fails half way."""
    api_key = "bench-" + secrets.token_hex(8)
    data_dir = workdir / "gateway"
    data_dir.mkdir(parents=True, exist_ok=True)
    policy = data_dir / "policy.yaml"
    policy.write_text(POLICY)  # the tests' rules (none matches these servers), as before
    env = {
        "TETHER_API_KEYS": api_key,
        "ANTHROPIC_API_KEY": "",
        "TETHER_MCP_CALL_TIMEOUT": "30",
        "TETHER_SANDBOX_WARM_POOL": "0",
        **(gateway_env or {}),
    }
    with ExitStack() as processes:
        dual = _start(processes, lambda: start_upstream("dual"))
        session = _start(processes, lambda: start_upstream("session", legacy_only=True))
        gateway_args = ["gateway", "--port", "0", "--data-dir", str(data_dir), "--policy", str(policy)]
        gateway = _start(processes, lambda: start_server(gateway_args, env))
        with httpx2.Client(base_url=gateway.url, headers={"x-api-key": api_key}, timeout=60) as http:
            tunnel = _post(http, "/v1/tunnels", {"display_name": "bench"})
            token = _post(http, f"/v1/tunnels/{tunnel['id']}/reveal_token", {})["tunnel_token"]
            config = write_config(
                workdir / "tunnel.yaml",
                [{"subdomain": "dual", "target": dual.url}, {"subdomain": "session", "target": session.url}],
            )
            agent = _start(  # stopped first: it holds links to the gateway
                processes,
                lambda: start_agent(
                    gateway.url, token, config, "bench-agent", connections=AGENT_CONNECTIONS, ping=(5.0, 5.0)
                ),
            )
            _wait_for_agent(agent, AGENT_CONNECTIONS)
            domain = str(tunnel["domain"])
            servers = {
                "dual": dual.url + "/mcp",
                "session": session.url + "/mcp",
                "dual-tunnel": f"http://dual.{domain}/mcp",
                "session-tunnel": f"http://session.{domain}/mcp",
            }
            for name, url in servers.items():
                _post(http, "/v1/mcp_servers", {"name": name, "transport": {"type": "url", "url": url}})
            _post(http, "/v1/mcp_servers", {"name": "local", "transport": stdio_transport()})
            for path, virtual in VIRTUAL.items():
                selections: list[dict[str, Any]] = [{"server": path, "tools": ["add"]}]
                if path == "dual":
                    selections.append({"server": "local"})
                _post(http, "/v1/mcp_virtual_servers", {"name": virtual, "servers": selections})
        yield BenchStack(gateway, api_key, dual, session, agent, domain)
