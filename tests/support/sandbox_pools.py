"""Driving a ``SandboxPool`` in tests: a ``bash`` call in a session's sandbox, and what ``/proc``
says of a sandbox process (its command line, its parent)."""

from __future__ import annotations

from pathlib import Path

from mcp.types import TextContent

from gateway.tools.sandbox import SandboxPool
from tests.support.processes import sandbox_client


async def bash_in(pool: SandboxPool, session_id: str, command: str) -> str:
    """The output of ``command`` run by ``bash`` in the session's sandbox (started if need be);
    a tool error fails the test."""
    endpoint = await pool.endpoint(session_id)
    async with sandbox_client(endpoint.url, endpoint.headers) as client:
        result = await client.call_tool("bash", {"command": command})
    block = result.content[0]
    assert isinstance(block, TextContent)
    assert not result.is_error, block.text
    return block.text


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
