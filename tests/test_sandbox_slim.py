"""The slim sandbox entry point: ``python -m sandbox_server`` imports neither the gateway nor
the ``anthropic`` SDK, serves the same toolset as ``tether sandbox`` (still an alias), and is
what starters run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mcp.types import TextContent

from gateway.cli import build_parser as tether_parser
from sandbox_server import launch
from sandbox_server.cli import build_parser
from tests.support.processes import running_sandbox, sandbox_client

FORBIDDEN = ("gateway", "anthropic")

_SET_UP = """
import json, sys, tempfile
from pathlib import Path
from sandbox_server import cli, warm
from sandbox_server.server import build_server
from sandbox_server.transport import transport_security

warm.preload()  # everything a sandbox imports before serving
args = cli.build_parser().parse_args(["--workspace", "unused", "--memory", "64M"])
with tempfile.TemporaryDirectory() as scratch:
    server = build_server(Path(scratch))
    app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=transport_security("127.0.0.1"))
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_a_set_up_sandbox_server_has_imported_neither_the_gateway_nor_the_sdk() -> None:
    done = subprocess.run([sys.executable, "-c", _SET_UP], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    top_level = set(json.loads(done.stdout.splitlines()[-1]))
    assert {"sandbox_server", "mcp", "uvicorn", "starlette"} <= top_level, "the check saw the real imports"
    assert not top_level & set(FORBIDDEN)


def test_help_is_served_without_importing_the_server_or_the_mcp_sdk() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sandbox_server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "--workspace" in done.stdout and "--memory" in done.stdout and "--egress" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
    assert "sandbox_server" in imported
    assert not imported & {"mcp", "pydantic", "uvicorn", *FORBIDDEN}


@pytest.mark.parametrize("warm", [False, True])
def test_what_starters_run_is_slim_and_refuses_bad_flags(tmp_path: Path, warm: bool) -> None:
    command = launch.warm_command(8) if warm else launch.command([])
    assert command[1:] == ["-m", "sandbox_server.started", "sandbox", *command[4:]]
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "--workspace" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in done.stderr.splitlines()}
    assert "sandbox_server" in imported and not imported & {"mcp", *FORBIDDEN}
    refused = subprocess.run(
        launch.command(["--workspace", str(tmp_path), "--memory", "not-a-size"]),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--memory" in refused.stderr


def test_tether_sandbox_keeps_the_same_flags() -> None:
    flags = ["--workspace", "w", "--memory", "64M", "--pids", "9", "--egress", "none", "--backend", "auto"]
    alias = tether_parser().parse_args(["sandbox", *flags])
    slim = build_parser().parse_args(flags)
    assert {k: v for k, v in vars(alias).items() if k not in ("command", "func")} == {
        k: v for k, v in vars(slim).items() if k not in ("warm", "zygote")
    }
    assert slim.memory == 64 * 1024 * 1024 and slim.pids == 9


@pytest.mark.anyio
async def test_the_slim_server_serves_the_toolset_and_runs_bash(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    with running_sandbox(
        ["sandbox", "--workspace", str(workspace), "--port", "0", "--egress", "none"], module="sandbox_server"
    ) as server:
        async with sandbox_client(server.url + "/mcp", server.headers) as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            assert names == {"read", "write", "edit", "glob", "grep", "bash"}
            result = await client.call_tool("bash", {"command": "echo slim > made.txt && pwd"})
            assert not result.is_error
            block = result.content[0]
            assert isinstance(block, TextContent) and block.text == "/workspace\n"
        assert server.view(workspace / "made.txt").read_text() == "slim\n"
