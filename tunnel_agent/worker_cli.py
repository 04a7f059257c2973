"""``tether tunnel`` flags for worker mode, and the worker they build.

Kept apart from ``cli`` so a plain tunnel agent never imports the ``anthropic`` SDK (about a
second of start-up): it is loaded only when ``--environment`` asks for a worker.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tunnel_agent.connector import api_url
from tunnel_agent.metrics import AgentMetrics
from tunnel_agent.routes import DynamicRoutes

if TYPE_CHECKING:
    import anthropic

    from tunnel_agent.worker import WorkerSettings


WHOAMI = "/v1/tether/whoami"


class Runnable(Protocol):
    async def run(self) -> None: ...

    async def close(self) -> None: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "worker mode: run a self_hosted environment's sandboxes here (the API key may come from "
        "TETHER_API_KEY, which keeps it out of ps output)"
    )
    group.add_argument("--environment", help="self_hosted environment id whose work this agent takes")
    group.add_argument(
        "--api-key",
        help="a worker key for this environment, from `tether keys create --role worker` "
        "(prefer TETHER_API_KEY; an admin key is refused)",
    )
    where = group.add_mutually_exclusive_group()
    where.add_argument("--tunnel-domain", help="this agent's tunnel domain (the tunnel's 'domain' field)")
    where.add_argument("--tunnel-id", help="this agent's tunnel id: its domain is read through the API")
    group.add_argument(
        "--workspaces", default="tether-workspaces", help="directory holding one workspace per session"
    )
    group.add_argument(
        "--sandbox-args",
        default="",
        help="extra 'tether sandbox' flags, with '=': --sandbox-args='--backend docker --egress limited'",
    )
    group.add_argument("--max-sessions", type=int, default=8, help="sessions served at once (default 8)")
    group.add_argument("--lease-ttl", type=int, default=30, help="work lease TTL in seconds (default 30)")
    group.add_argument(
        "--heartbeat-interval", type=float, default=None, help="seconds between heartbeats (default TTL/3)"
    )


def check_arguments(args: argparse.Namespace) -> None:
    """Exit with a message for a bad combination, before anything starts; make
    ``--workspaces`` absolute (sandboxes must not depend on the working directory)."""
    if not args.environment:
        if not args.config:
            sys.exit("tether tunnel: --config is required (unless --environment makes this a worker)")
        return
    if not (args.api_key or os.environ.get("TETHER_API_KEY")):
        sys.exit("tether tunnel: --environment needs an API key (--api-key or TETHER_API_KEY)")
    if not (args.tunnel_domain or args.tunnel_id):
        sys.exit("tether tunnel: --environment needs --tunnel-domain or --tunnel-id")
    if not 1 <= args.max_sessions <= 256:
        sys.exit("tether tunnel: --max-sessions must be between 1 and 256")
    if not 2 <= args.lease_ttl <= 3600:
        sys.exit("tether tunnel: --lease-ttl must be between 2 and 3600 seconds")
    interval = args.heartbeat_interval
    if interval is not None and not 0 < interval < args.lease_ttl:
        sys.exit("tether tunnel: --heartbeat-interval must be positive and shorter than --lease-ttl")
    try:
        shlex.split(args.sandbox_args)
    except ValueError as exc:
        sys.exit(f"tether tunnel: --sandbox-args: {exc}")
    args.workspaces = str(Path(args.workspaces).resolve())


@asynccontextmanager
async def open_worker(
    args: argparse.Namespace, agent_id: str, routes: DynamicRoutes, metrics: AgentMetrics
) -> AsyncIterator[Runnable | None]:
    """The worker for ``--environment`` (None without it), with its API client open."""
    if not args.environment:
        yield None
        return
    import anthropic

    from tunnel_agent.worker import Worker

    key = args.api_key or os.environ.get("TETHER_API_KEY", "")
    async with anthropic.AsyncAnthropic(base_url=api_url(args.gateway), api_key=key, timeout=30) as client:
        await refuse_admin_keys(client)
        settings = await _settings(args, client, agent_id)
        yield Worker(settings, client, routes, metrics, tunnel_up=lambda: metrics.ready)


MAKE_A_WORKER_KEY = (
    "create one with `tether keys create --name SITE --role worker --environment ENV_ID "
    "[--tunnel TUNNEL_ID]` and pass it as TETHER_API_KEY"
)
ADMIN_KEY_REFUSED = (
    "tether tunnel: refusing to run with an admin API key: an on-prem host should hold a key "
    f"that can serve only its environment; {MAKE_A_WORKER_KEY}"
)
WHOAMI_PATIENCE = 30.0
"""How long a starting worker keeps asking a gateway it cannot reach (or that answers 5xx)
what its key is, before it gives up (a supervisor restarts it)."""


async def refuse_admin_keys(client: anthropic.AsyncAnthropic, patience: float = WHOAMI_PATIENCE) -> None:
    """Exit, in one line, unless the key is a worker key: an admin key is refused, and so is
    one the gateway does not know or that cannot use the work queue."""
    import anthropic
    import anyio

    deadline = anyio.current_time() + patience
    delay = 0.25
    while True:
        try:
            principal = await client.get(WHOAMI, cast_to=object)
            break
        except anthropic.AuthenticationError:
            sys.exit("tether tunnel: the gateway refused this API key (unknown, revoked or expired)")
        except (anthropic.APIConnectionError, anthropic.InternalServerError) as exc:
            if anyio.current_time() + delay > deadline:
                sys.exit(f"tether tunnel: cannot ask the gateway what this API key may do: {exc}")
            await anyio.sleep(delay)
            delay = min(delay * 2, 5.0)
    role = principal.get("role") if isinstance(principal, dict) else None
    if role == "admin":
        sys.exit(ADMIN_KEY_REFUSED)
    if role != "worker":
        sys.exit(
            f"tether tunnel: this API key's role ({role}) cannot serve an environment; {MAKE_A_WORKER_KEY}"
        )


async def _settings(
    args: argparse.Namespace, client: anthropic.AsyncAnthropic, agent_id: str
) -> WorkerSettings:
    import anthropic

    from tunnel_agent.worker import WorkerSettings

    domain = args.tunnel_domain
    if domain is None:
        try:
            domain = (await client.beta.tunnels.retrieve(args.tunnel_id)).domain
        except anthropic.APIError as exc:
            sys.exit(f"tether tunnel: cannot read tunnel {args.tunnel_id}: {exc}")
    return WorkerSettings(
        environment_id=args.environment,
        worker_id=agent_id,
        tunnel_domain=domain.strip().lower().rstrip("."),
        workspaces=Path(args.workspaces),
        sandbox_args=tuple(shlex.split(args.sandbox_args)),
        lease_ttl=args.lease_ttl,
        heartbeat_interval=args.heartbeat_interval or args.lease_ttl / 3,
        max_sessions=args.max_sessions,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_max,
    )
