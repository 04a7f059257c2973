"""A stdio MCP server for the MCP gateway tests (standalone: needs only the mcp package).

Run: ``python tests/support/stdio_mcp.py``. ``crash`` makes it exit mid-call, so the
gateway's supervisor has something to restart; ``pid`` tells a test which process answered;
``steps`` reports progress.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from mcp.server import MCPServer
from mcp.server.mcpserver import Context

server = MCPServer("stdio-fixture")


@server.tool(description="Upper-case the text.")
def shout(text: str) -> str:
    return text.upper() + "!"


@server.tool(description="The process id of this server.")
def pid() -> str:
    return str(os.getpid())


@server.tool(description="Exit at once with CODE, without answering.")
def crash(code: int = 3) -> str:
    sys.stdout.flush()
    os._exit(code)


@server.tool(description="A digest of environment variable NAME (env injection tests).")
def env_digest(name: str) -> str:
    value = os.environ.get(name)
    return "unset" if value is None else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


@server.tool(description="Start a grandchild that sleeps, and return its pid (process-group tests).")
def spawn_child() -> str:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return str(child.pid)


@server.tool(description="Report COUNT progress steps, then answer (progress tests).")
async def steps(count: int, ctx: Context) -> str:
    for step in range(1, count + 1):
        await ctx.report_progress(step, count, f"step {step} of {count}")
    return f"stdio did {count} steps"


@server.prompt(description="Greet someone, loudly.")
def greet(name: str) -> str:
    return f"HELLO {name.upper()}"


if __name__ == "__main__":
    server.run("stdio")
