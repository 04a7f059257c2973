"""A small MCP server over stdio, standing in for one of your own: a glossary of Tether terms.

The gateway launches and supervises it (``register.py`` registers it as a ``stdio`` upstream),
so nothing else has to run. Try it alone with any MCP client that speaks stdio.
"""

from __future__ import annotations

from mcp.server import MCPServer

GLOSSARY = {
    "session": "A run of an agent in an environment, kept as an append-only log of events.",
    "environment": "Where a session's tools run: a local sandbox (cloud) or an on-prem worker (self_hosted).",
    "tunnel": "An outbound WebSocket from an on-prem agent to the gateway; nothing dials in.",
    "vault": "Encrypted credentials, added on the last hop and never shown to the model.",
}

server = MCPServer("glossary")


@server.tool(description="Define a Tether term (session, environment, tunnel, vault).")
def define(term: str) -> str:
    return GLOSSARY.get(term.strip().lower(), f"no entry for {term!r}; known: {', '.join(sorted(GLOSSARY))}")


@server.tool(description="List the terms the glossary knows.")
def terms() -> list[str]:
    return sorted(GLOSSARY)


if __name__ == "__main__":
    server.run("stdio")
