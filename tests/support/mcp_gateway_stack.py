"""Real processes for the MCP gateway tests: upstreams, a gateway, and MCP clients of it.

``GatewayStack`` starts two HTTP upstreams (``alpha`` and ``beta``, which collide on
several names) and a gateway launched by ``mcp_gateway_launcher``, then registers them
plus a stdio upstream (``local``) and a few virtual servers over the REST API.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.processes import ServerProcess, start_server

T = TypeVar("T")
STDIO_SERVER = str(Path(__file__).with_name("stdio_mcp.py"))
UPSTREAM_MODULE = "tests.support.mcp_gateway_upstream"
LAUNCHER_MODULE = "tests.support.mcp_gateway_launcher"
STDIO_SECRET = "stdio-" + secrets.token_hex(8)

POLICY = r"""
version: 1
rules:
  - id: no-drop-table
    servers: ["alpha"]
    tools: ["echo"]
    when:
      text: {matches: 'DROP\s+TABLE'}
    decision: deny
    message: "Destructive SQL is not allowed."
  - id: beta-echo-needs-review
    servers: ["beta"]
    tools: ["echo"]
    decision: ask
"""


def start_upstream(
    label: str, port: int = 0, legacy_only: bool = False, max_request_bytes: int | None = None
) -> ServerProcess:
    args = ["--label", label, "--port", str(port), *(["--legacy-only"] if legacy_only else [])]
    if max_request_bytes is not None:
        args += ["--max-request-bytes", str(max_request_bytes)]
    return start_server(args, module=UPSTREAM_MODULE)


def upstream_sessions(upstream: ServerProcess) -> set[str]:
    """The ids of the sessions (server instances) an upstream from ``start_upstream`` holds now."""
    ids: list[str] = httpx2.get(upstream.url + "/_stats", timeout=10).json()["ids"]
    return set(ids)


def start_gateway(data_dir: Path, api_key: str, extra_env: dict[str, str] | None = None) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    policy = data_dir / "policy.yaml"
    policy.write_text(POLICY)
    env = {
        "TETHER_API_KEYS": api_key,
        "ANTHROPIC_API_KEY": "",
        "TETHER_MCP_BREAKER_FAILURES": "2",
        "TETHER_MCP_BREAKER_RESET_SECONDS": "0.5",
        "TETHER_MCP_CALL_TIMEOUT": "30",
        **(extra_env or {}),
    }
    args = ["--port", "0", "--data-dir", str(data_dir), "--policy", str(policy)]
    return start_server(args, env, module=LAUNCHER_MODULE)


def key_id(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def stdio_transport(env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"type": "stdio", "command": sys.executable, "args": [STDIO_SERVER], "env": env or {}}


@dataclass
class GatewayStack:
    gateway: ServerProcess
    api_key: str
    upstreams: dict[str, ServerProcess] = field(default_factory=dict)

    def mcp_url(self, virtual_server: str) -> str:
        return f"{self.gateway.url}/mcp/{virtual_server}"

    @contextmanager
    def rest(self) -> Iterator[httpx2.Client]:
        with httpx2.Client(
            base_url=self.gateway.url, headers={"x-api-key": self.api_key}, timeout=60
        ) as http:
            yield http

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.rest() as http:
            response = http.post(path, json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def get(self, path: str) -> dict[str, Any]:
        with self.rest() as http:
            response = http.get(path)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def delete(self, path: str) -> None:
        with self.rest() as http:
            response = http.delete(path)
        assert response.status_code == 200, response.text

    def register_url(self, name: str, upstream: ServerProcess, **extra: Any) -> dict[str, Any]:
        return self.post(
            "/v1/mcp_servers",
            {"name": name, "transport": {"type": "url", "url": upstream.url + "/mcp"}, **extra},
        )

    def token(self, subject: str, *virtual_servers: str) -> str:
        minted = self.post("/v1/mcp_tokens", {"subject": subject, "virtual_servers": list(virtual_servers)})
        token: str = minted["token"]
        return token

    @asynccontextmanager
    async def connect(
        self,
        virtual_server: str,
        mode: str,
        headers: dict[str, str] | None = None,
        max_sse_event_size: int | None = 1024 * 1024,
        **options: Any,
    ) -> AsyncIterator[Client]:
        """An MCP client of ``/mcp/{virtual_server}``, authenticated with the API key by default."""
        presented = {"x-api-key": self.api_key} if headers is None else headers
        url = self.mcp_url(virtual_server)
        async with (
            httpx2.AsyncClient(headers=presented, timeout=httpx2.Timeout(60, connect=10)) as http,
            Client(
                streamable_http_client(url, http_client=http, max_sse_event_size=max_sse_event_size),
                mode=mode,
                **options,
            ) as client,
        ):
            yield client


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; a bounded wait on a condition."""
    with anyio.fail_after(timeout):
        while True:
            found = await check()
            if found:
                return found
            await anyio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover - fail_after raises first


def alive(pid: int) -> bool:
    """Running (zombies count as gone: they only wait for their parent to reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)
