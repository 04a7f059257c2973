"""End-to-end tests of the sandbox over real MCP: a child process on streamable HTTP, and stdio."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from anthropic.types.beta import (
    beta_managed_agents_agent_toolset20260401_bash_input as bash_input,
)
from anthropic.types.beta import (
    beta_managed_agents_agent_toolset20260401_edit_input as edit_input,
)
from anthropic.types.beta import (
    beta_managed_agents_agent_toolset20260401_glob_input as glob_input,
)
from anthropic.types.beta import (
    beta_managed_agents_agent_toolset20260401_grep_input as grep_input,
)
from anthropic.types.beta import (
    beta_managed_agents_agent_toolset20260401_read_input as read_input,
)
from anthropic.types.beta import (
    beta_managed_agents_agent_toolset20260401_write_input as write_input,
)
from mcp import Client, StdioServerParameters
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel

from sandbox_server import workspace_fs
from sandbox_server.auth import TOKEN_ENV
from tests.support.processes import ServerProcess, running_sandbox, sandbox_client

REPO_ROOT = Path(__file__).resolve().parent.parent

SDK_INPUTS: dict[str, type[BaseModel]] = {
    "read": read_input.BetaManagedAgentsAgentToolset20260401ReadInput,
    "write": write_input.BetaManagedAgentsAgentToolset20260401WriteInput,
    "edit": edit_input.BetaManagedAgentsAgentToolset20260401EditInput,
    "glob": glob_input.BetaManagedAgentsAgentToolset20260401GlobInput,
    "grep": grep_input.BetaManagedAgentsAgentToolset20260401GrepInput,
    "bash": bash_input.BetaManagedAgentsAgentToolset20260401BashInput,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    workspace = tmp_path / "ws"
    with running_sandbox(["sandbox", "--workspace", str(workspace), "--port", "0"]) as server:
        yield server, workspace


def _text(result: CallToolResult) -> str:
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def _shape(schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Property names with their JSON types, and the required list: what a caller must agree on."""
    properties = {
        name: {k: v for k, v in prop.items() if k in ("type", "anyOf", "items")}
        for name, prop in schema["properties"].items()
    }
    return properties, sorted(schema.get("required", []))


@pytest.mark.anyio
async def test_tools_match_the_sdk_input_types(sandbox: tuple[ServerProcess, Path]) -> None:
    server, _ = sandbox
    async with sandbox_client(server.mcp_url, server.headers) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert sorted(tools) == sorted(SDK_INPUTS)
    for name, model in SDK_INPUTS.items():
        assert _shape(tools[name].input_schema) == _shape(model.model_json_schema()), name
        assert tools[name].description
        assert all(prop.get("description") for prop in tools[name].input_schema["properties"].values())


@pytest.mark.anyio
async def test_write_read_edit_and_errors_over_http(sandbox: tuple[ServerProcess, Path]) -> None:
    server, workspace = sandbox
    async with sandbox_client(server.mcp_url, server.headers) as client:
        written = await client.call_tool("write", {"file_path": "notes/todo.txt", "content": "one\ntwo\n"})
        assert not written.is_error
        assert _text(written) == "Created /workspace/notes/todo.txt (8 bytes)"
        assert (workspace / "notes/todo.txt").read_text() == "one\ntwo\n"

        read = await client.call_tool(
            "read", {"file_path": "/workspace/notes/todo.txt", "view_range": [2, 0]}
        )
        assert not read.is_error
        assert _text(read) == "     2\ttwo\n"

        edited = await client.call_tool(
            "edit", {"file_path": "notes/todo.txt", "old_string": "two", "new_string": "2"}
        )
        assert _text(edited) == "Replaced 1 occurrence in /workspace/notes/todo.txt"
        assert (workspace / "notes/todo.txt").read_text() == "one\n2\n"

        escape = await client.call_tool("read", {"file_path": "/etc/passwd"})
        assert escape.is_error
        assert "outside the workspace" in _text(escape)

        (workspace / "passwd").symlink_to("/etc/passwd")
        link = await client.call_tool("read", {"file_path": "passwd"})
        assert link.is_error
        assert "outside the workspace" in _text(link)

        not_unique = await client.call_tool(
            "edit", {"file_path": "notes/todo.txt", "old_string": "", "new_string": "x"}
        )
        assert not_unique.is_error

        invalid = await client.call_tool("read", {"view_range": "nope"})
        assert invalid.is_error

        bash = await client.call_tool("bash", {"command": "ls"})
        assert not bash.is_error
        assert _text(bash) == "notes\npasswd\n"

        # The server keeps answering after all those errors.
        found = await client.call_tool("glob", {"pattern": "**/*.txt"})
        assert _text(found) == "/workspace/notes/todo.txt"
        grepped = await client.call_tool("grep", {"pattern": "^2$"})
        assert _text(grepped) == "/workspace/notes/todo.txt:2:2\n"
    assert server.process.poll() is None


@pytest.mark.anyio
async def test_stdio_mode(tmp_path: Path) -> None:
    workspace = tmp_path / "stdio-ws"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "gateway.cli", "sandbox", "--workspace", str(workspace), "--stdio"],
        cwd=str(REPO_ROOT),
    )
    async with Client(params) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert names == set(SDK_INPUTS)
        written = await client.call_tool("write", {"file_path": "a.txt", "content": "hello\n"})
        assert not written.is_error
        escape = await client.call_tool("write", {"file_path": "../a.txt", "content": "x"})
        assert escape.is_error
        read = await client.call_tool("read", {"file_path": "a.txt"})
        assert _text(read) == "     1\thello\n"
    # As root the workspace is a filesystem image the server unmounted on its way out: look inside.
    mounted = workspace_fs.attach_existing(workspace)
    try:
        assert (workspace / "a.txt").read_text() == "hello\n"
    finally:
        if mounted:
            workspace_fs.detach(workspace)
    assert not (tmp_path / "a.txt").exists()


def test_serving_http_without_a_token_is_refused(tmp_path: Path) -> None:
    """Deny by default: with no ``TETHER_SANDBOX_TOKEN`` the server does not start listening."""
    env = {name: value for name, value in os.environ.items() if name != TOKEN_ENV}
    finished = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "sandbox", "--workspace", str(tmp_path / "ws"), "--port", "0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode != 0
    assert f"set {TOKEN_ENV}" in finished.stderr
    assert "listening on" not in finished.stdout


@pytest.mark.anyio
async def test_the_token_never_reaches_a_command(sandbox: tuple[ServerProcess, Path]) -> None:
    server, _ = sandbox
    token = server.headers["Authorization"].split()[1]
    async with sandbox_client(server.mcp_url, server.headers) as client:
        seen = await client.call_tool(
            "bash", {"command": "env; cat /proc/*/environ /proc/*/cmdline 2>/dev/null"}
        )
    assert token not in _text(seen) and TOKEN_ENV not in _text(seen)
