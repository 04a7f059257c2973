"""Register an MCP server on the gateway and expose it as a virtual server at ``/mcp/examples``.

    .venv/bin/python examples/mcp_gateway/register.py [--token SUBJECT]

1. ``POST /v1/mcp_servers``: the upstream. Here ``glossary_server.py`` as a ``stdio`` server
   the gateway launches and supervises; a streamable HTTP server is registered the same way
   with ``{"type": "url", "url": "https://mcp.example.com/mcp"}`` (``--url`` does that), and
   one on-prem through a tunnel with ``http://<subdomain>.<tunnel domain>/mcp``.
2. ``POST /v1/mcp_virtual_servers``: a named selection of upstream tools (globs), served to
   any MCP client at ``TETHER_URL/mcp/examples``, under the policy files, vault credentials,
   rate limits and audit (``GET /v1/mcp_audit``).
3. With ``--token SUBJECT``: ``POST /v1/mcp_tokens`` mints a JWT that reaches only this
   virtual server (an API key reaches all of them); clients send it as
   ``Authorization: Bearer``. ``clients/`` has configurations for common MCP clients.

Running it again leaves what is already registered as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anthropic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_common.py

from _common import connect, gateway_url

VIRTUAL_SERVER = "examples"
GLOSSARY = Path(__file__).resolve().parent / "glossary_server.py"


def create(client: anthropic.Anthropic, path: str, body: dict[str, Any]) -> None:
    try:
        client.post(path, cast_to=object, body=body)
        print(f"created {path} {body['name']}")
    except anthropic.ConflictError:
        print(f"exists  {path} {body['name']}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Register the glossary MCP server and /mcp/examples.")
    parser.add_argument("--url", help="register this streamable HTTP MCP server (as 'remote') as well")
    parser.add_argument("--token", metavar="SUBJECT", help="mint a token for /mcp/examples for SUBJECT")
    args = parser.parse_args()
    client = connect()

    stdio = {"type": "stdio", "command": sys.executable, "args": [str(GLOSSARY)]}
    create(client, "/v1/mcp_servers", {"name": "glossary", "transport": stdio})
    selection: list[dict[str, Any]] = [{"server": "glossary", "tools": ["*"]}]
    if args.url:
        create(client, "/v1/mcp_servers", {"name": "remote", "transport": {"type": "url", "url": args.url}})
        selection.append({"server": "remote"})
    create(
        client,
        "/v1/mcp_virtual_servers",
        {"name": VIRTUAL_SERVER, "description": "Tether examples", "servers": selection},
    )
    print(f"MCP endpoint: {gateway_url()}/mcp/{VIRTUAL_SERVER}")
    if args.token:
        minted: Any = client.post(
            "/v1/mcp_tokens",
            cast_to=object,
            body={"subject": args.token, "virtual_servers": [VIRTUAL_SERVER]},
        )
        print(f"export TETHER_MCP_TOKEN={minted['token']}")


if __name__ == "__main__":
    main()
