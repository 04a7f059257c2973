"""``tether tunnel``: run the on-prem tunnel agent.

    tether tunnel --gateway https://tether.example.com --token-file /etc/tether/token \\
                  --config tunnel.yaml [--connections 2] [--admin-port 9464]

The token may also come from ``--token`` or ``TETHER_TUNNEL_TOKEN`` (a file or the
environment keeps it out of ``ps`` output). Prints ``listening on http://HOST:PORT`` once
the admin endpoints (``/ready``, ``/metrics``) are bound.

Worker mode (a ``self_hosted`` environment's sessions run their agent toolset here)::

    TETHER_API_KEY=... tether tunnel --gateway ... --token-file ... \\
        --environment env_... --tunnel-domain <the tunnel's domain> [--workspaces DIR]

``--tunnel-id tnl_...`` may replace ``--tunnel-domain`` (the domain is then read through the
API). ``--config`` becomes optional: the sandbox routes are added at run time.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio

from tunnel_agent import worker_cli
from tunnel_agent.admin import admin_server, bind
from tunnel_agent.allowlist import AllowList
from tunnel_agent.config import AgentConfig, ConfigError, load_config
from tunnel_agent.connector import Connector, ConnectorSettings, connect_url
from tunnel_agent.metrics import AgentMetrics
from tunnel_agent.mux import MuxSettings
from tunnel_agent.relay import Relay, pinned_client, upstream_client
from tunnel_agent.routes import DynamicRoutes
from tunnel_agent.trust import PinnedClients

READY_PREFIX = "listening on "
_AGENT_ID = re.compile(r"[^A-Za-z0-9._-]")

log = logging.getLogger("tether.tunnel.agent")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The agent's flags; the ``tether`` CLI adds them to its ``tunnel`` subcommand."""
    parser.add_argument("--gateway", required=True, help="gateway URL, e.g. https://tether.example.com")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="tunnel token (prefer --token-file or TETHER_TUNNEL_TOKEN)")
    token.add_argument("--token-file", help="file holding the tunnel token (re-read on every dial)")
    parser.add_argument(
        "--config", help="YAML file mapping subdomains to on-prem targets (optional with --environment)"
    )
    parser.add_argument("--connections", type=int, default=2, help="concurrent connections (default 2)")
    parser.add_argument(
        "--agent-id", default=None, help="stable id for replace-on-reconnect (default: host name)"
    )
    parser.add_argument("--admin-host", default="127.0.0.1")
    parser.add_argument("--admin-port", type=int, default=9464, help="port for /ready and /metrics")
    parser.add_argument("--ping-interval", type=float, default=5.0)
    parser.add_argument("--ping-timeout", type=float, default=5.0)
    parser.add_argument("--backoff-base", type=float, default=0.5)
    parser.add_argument("--backoff-max", type=float, default=30.0)
    parser.add_argument("--stable-after", type=float, default=30.0)
    parser.add_argument("--log-level", default="info")
    worker_cli.add_arguments(parser)


def token_source(args: argparse.Namespace) -> Callable[[], str]:
    if args.token_file:
        path = Path(args.token_file)
        return lambda: path.read_text().strip()
    token = args.token or os.environ.get("TETHER_TUNNEL_TOKEN")
    if not token:
        raise SystemExit("tether tunnel: a token is required (--token-file, --token or TETHER_TUNNEL_TOKEN)")
    return lambda: token


def default_agent_id() -> str:
    return _AGENT_ID.sub("-", socket.gethostname())[:64] or "agent"


async def run_agent(args: argparse.Namespace, config: AgentConfig) -> None:
    """Run the tunnel connections, the admin endpoints and, with ``--environment``, the worker."""
    metrics = AgentMetrics()
    agent_id = args.agent_id or default_agent_id()
    routes = DynamicRoutes(reserved=config.routes)
    async with worker_cli.open_worker(args, agent_id, routes, metrics) as worker:
        await serve(args, config, agent_id, routes, metrics, worker)


async def serve(
    args: argparse.Namespace,
    config: AgentConfig,
    agent_id: str,
    routes: DynamicRoutes,
    metrics: AgentMetrics,
    worker: worker_cli.Runnable | None,
) -> None:
    connection = ConnectorSettings(
        url=connect_url(args.gateway),
        token=token_source(args),
        agent_id=agent_id,
        connections=args.connections,
        mux=MuxSettings(ping_interval=args.ping_interval, ping_timeout=args.ping_timeout),
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_max,
        stable_after=args.stable_after,
    )
    sock = bind(args.admin_host, args.admin_port)
    server = admin_server(metrics)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with (
            upstream_client() as http,
            PinnedClients(pinned_client) as pinned,
            anyio.create_task_group() as tasks,
        ):
            relay = Relay(config, http, metrics, dynamic=routes, pinned=pinned)
            connector = Connector(connection, relay, metrics)
            tasks.start_soon(connector.run, name="tunnel connector")
            tasks.start_soon(functools.partial(server.serve, sockets=[sock]), name="admin server")
            if worker is not None:
                tasks.start_soon(worker.run, name="environment worker")
            host, port = sock.getsockname()[:2]
            print(f"{READY_PREFIX}http://{f'[{host}]' if ':' in host else host}:{port}", flush=True)
            log.info(
                "agent %s: %d connection(s) to %s; routes: %s",
                connection.agent_id,
                connection.connections,
                connection.url,
                ", ".join(sorted(config.routes)) or "(none configured)",
            )
            async for signum in signals:
                log.info("%s: closing tunnel connections", signal.Signals(signum).name)
                break
            if worker is not None:
                # Sandboxes go first, while the links are still up for in-flight calls to end.
                with anyio.move_on_after(15):
                    await worker.close()
            with anyio.move_on_after(5):
                await connector.close()
            server.should_exit = True
            tasks.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tether tunnel", description=__doc__.split("\n")[0])
    add_arguments(parser)
    run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    if args.environment:  # a worker: its sandboxes' workspace mounts die with it (first, single-threaded)
        from sandbox_server.workspace_fs import enter_private_mounts

        enter_private_mounts()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("httpx2", "httpx", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not 1 <= args.connections <= 16:
        sys.exit("tether tunnel: --connections must be between 1 and 16")
    if args.agent_id is not None and (_AGENT_ID.search(args.agent_id) or not 1 <= len(args.agent_id) <= 64):
        sys.exit("tether tunnel: --agent-id must be 1-64 characters of A-Z a-z 0-9 . _ -")
    worker_cli.check_arguments(args)
    try:
        config = load_config(args.config) if args.config else AgentConfig({}, AllowList(()))
        connect_url(args.gateway)
    except (ConfigError, ValueError) as exc:
        sys.exit(f"tether tunnel: {exc}")
    anyio.run(run_agent, args, config)
