"""An MCP client of the gateway's ``/mcp/examples``: list the tools, call one.

    .venv/bin/python examples/mcp_gateway/client.py [TERM]

Uses the ``mcp`` SDK's streamable HTTP client. It authenticates with ``TETHER_MCP_TOKEN``
(``Authorization: Bearer``, from ``register.py --token``) when set, else with the API key
(``x-api-key``). Run ``register.py`` first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_common.py

from _common import api_key, gateway_url

VIRTUAL_SERVER = "examples"


def credentials() -> dict[str, str]:
    token = os.environ.get("TETHER_MCP_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {"x-api-key": api_key()}


async def main(term: str) -> None:
    url = f"{gateway_url()}/mcp/{VIRTUAL_SERVER}"
    async with (
        httpx2.AsyncClient(headers=credentials(), timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        tools = (await client.list_tools()).tools
        print("tools:", ", ".join(sorted(tool.name for tool in tools)))
        result = await client.call_tool("define", {"term": term})
        text = " ".join(getattr(block, "text", "") for block in result.content)
        print(f"define({term!r}){' ERROR' if result.is_error else ''}: {text}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "tunnel")
