"""Start real ``python -m tunnel_agent`` processes and make MCP calls through a hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.tunnels.hub import TunnelHub
from tests.support.processes import ServerProcess, start_server


def write_config(path: Path, routes: list[dict[str, Any]], allow: list[str] | None = None) -> Path:
    document: dict[str, Any] = {"routes": routes}
    if allow is not None:
        document["allow"] = allow
    path.write_text(yaml.safe_dump(document))
    return path


def start_agent(
    gateway_url: str,
    token: str,
    config: Path,
    agent_id: str,
    connections: int = 2,
    env: dict[str, str] | None = None,
    ping: tuple[float, float] = (0.2, 1.0),
) -> ServerProcess:
    """The agent prints its admin URL once bound; the token travels in the environment."""
    args = [
        "--gateway",
        gateway_url,
        "--config",
        str(config),
        "--agent-id",
        agent_id,
        "--connections",
        str(connections),
        "--admin-port",
        "0",
        "--ping-interval",
        str(ping[0]),
        "--ping-timeout",
        str(ping[1]),
        "--backoff-base",
        "0.05",
        "--backoff-max",
        "0.5",
    ]
    return start_server(args, {**(env or {}), "TETHER_TUNNEL_TOKEN": token}, module="tunnel_agent")


async def call_tool(
    hub: TunnelHub, url: str, name: str, arguments: dict[str, Any] | None = None, timeout: float = 20
) -> Any:
    """An MCP tool call whose HTTP goes through the hub's transport for ``url``.

    A transport failure surfaces as the httpx2 exception itself, not wrapped in the task
    groups of the MCP client."""
    transport = hub.transport_for(url)
    assert transport is not None, f"{url} is not a tunnel URL"
    try:
        async with (
            httpx2.AsyncClient(transport=transport, timeout=timeout) as http,
            Client(streamable_http_client(url, http_client=http), read_timeout_seconds=timeout) as client,
        ):
            return await client.call_tool(name, arguments or {})
    except BaseExceptionGroup as group:
        raise _first_leaf(group) from group


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)
