"""The README's first command on a machine with nothing but Python: no bubblewrap.

bubblewrap is hidden, not uninstalled (``support.hiding``). The demo must still finish its
write-then-read round trip, say once how to enable ``bash``, and exit non-zero when its
session fails; a sandbox server must serve the file tools with their usual confinement, and
answer ``bash`` with the apt command while running nothing the model sends. And a sandbox
that is already gone, or cannot start at all, is never a "the harness failed" error.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mcp.types import CallToolResult, TextContent

from gateway.tools.sandbox import SandboxPool, SandboxStartFailed
from sandbox_server import launch
from sandbox_server.backends import bash_notice
from tests.support.hiding import hiding, installed
from tests.support.processes import running_sandbox, sandbox_client

NO_BWRAP = hiding(installed("bwrap", fixed=["/usr/bin/bwrap"]))
DEMO_TIMEOUT = 60
APT_COMMAND = "apt-get install -y bubblewrap"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _demo(data_dir: Path, prefix: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TETHER_API_KEYS")}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "gateway.cli", "demo", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        env={**clean, **env},
    )


def test_the_demo_round_trips_without_bubblewrap_and_says_how_to_get_bash(tmp_path: Path) -> None:
    completed = _demo(tmp_path, NO_BWRAP, TETHER_DEMO_VERBOSE="1")
    out = completed.stdout
    assert completed.returncode == 0, out + completed.stderr
    assert "agent.tool_result          Created /workspace/notes/plan.md" in out
    assert "1\t# Plan" in out.split("agent.tool_use             read", 1)[1]
    assert "ERROR" not in out and "session.error" not in out
    assert "stop_reason=end_turn" in out
    # The demo's own note, and the gateway's single log line at start; the sandbox is quiet.
    notes = [
        line for line in out.splitlines() if line.startswith("Note: bubblewrap (bwrap) is not installed")
    ]
    assert len(notes) == 1 and APT_COMMAND in notes[0]
    said = [line for line in out.splitlines() if "gateway |" in line and "bwrap) is not installed" in line]
    assert len(said) == 1 and "WARNING tether.sandbox" in said[0] and APT_COMMAND in said[0]
    assert "tether sandbox: bubblewrap" not in out


def test_the_demo_fails_when_its_session_ends_in_an_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on: every model call fails
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    completed = _demo(tmp_path, [], TETHER_MODEL_BASE_URL=dead, TETHER_MODEL_MAX_ATTEMPTS="1")
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "session.error" in completed.stdout
    assert "demo failed: session error" in completed.stderr


def test_the_notice_is_only_for_hosts_whose_sandboxes_would_need_bubblewrap() -> None:
    def missing() -> None:
        return None

    assert bash_notice([], bwrap=lambda: "/usr/bin/bwrap") is None
    assert bash_notice(["--backend", "docker"], bwrap=missing) is None
    notice = bash_notice(["--timeout", "5"], bwrap=missing)
    assert notice is not None and APT_COMMAND in notice and "Docker" not in notice
    auto = bash_notice(["--backend=auto"], bwrap=missing)
    assert auto is not None and "or a reachable Docker engine" in auto


def _text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def _nothing_ran_or_escaped(workspace: Path, ran_on_host: Path) -> bool:
    """No trace of the bash command, in the workspace or on the host, and no file written outside."""
    traces = [workspace / "ran", ran_on_host, Path("/etc/tether-escape"), workspace.parent / "outside.txt"]
    return not any(path.exists() for path in traces) and (workspace / "notes/a.txt").read_text() == "one\n2\n"


@pytest.mark.anyio
async def test_a_sandbox_without_bubblewrap_serves_files_and_runs_no_command(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "etc").symlink_to("/etc")  # a way out that the file tools must refuse
    ran_on_host = tmp_path / "ran-on-host"
    args = ["sandbox", "--workspace", str(workspace), "--port", "0"]
    with running_sandbox(args, prefix=NO_BWRAP) as server:
        async with sandbox_client(server.mcp_url, server.headers) as client:
            bash = await client.call_tool(
                "bash", {"command": f"echo ran > /workspace/ran; touch {ran_on_host}; echo ran"}
            )
            assert bash.is_error
            assert "bubblewrap (bwrap) is not installed" in _text(bash) and APT_COMMAND in _text(bash)

            written = await client.call_tool("write", {"file_path": "notes/a.txt", "content": "one\ntwo\n"})
            assert _text(written) == "Created /workspace/notes/a.txt (8 bytes)"
            edited = await client.call_tool(
                "edit", {"file_path": "/workspace/notes/a.txt", "old_string": "two", "new_string": "2"}
            )
            assert not edited.is_error
            assert (
                _text(await client.call_tool("read", {"file_path": "notes/a.txt"}))
                == "     1\tone\n     2\t2\n"
            )
            assert _text(await client.call_tool("glob", {"pattern": "**/*.txt"})) == "/workspace/notes/a.txt"
            assert _text(await client.call_tool("grep", {"pattern": "^2$"})) == "/workspace/notes/a.txt:2:2\n"

            for tool, arguments in (
                ("read", {"file_path": "etc/passwd"}),
                ("read", {"file_path": "/etc/passwd"}),
                ("write", {"file_path": "etc/tether-escape", "content": "x"}),
                ("write", {"file_path": "../outside.txt", "content": "x"}),
            ):
                refused = await client.call_tool(tool, arguments)
                assert refused.is_error, (tool, arguments)
                assert "outside the workspace" in _text(refused), (tool, arguments)
        startup = "\n".join(server.output)
    assert _nothing_ran_or_escaped(workspace, ran_on_host)
    # Started by hand, the server says it once itself (a gateway's sandboxes leave it to the gateway).
    assert startup.count("tether sandbox: bubblewrap (bwrap) is not installed") == 1


class _AlreadyGone:
    """A child whose exit asyncio has seen but not yet reported: signalling it raises
    ``ProcessLookupError`` (asyncio's transport has dropped it), waiting reports the exit."""

    returncode: int | None = None
    signalled = 0

    def terminate(self) -> None:
        self.signalled += 1
        raise ProcessLookupError

    kill = terminate

    async def wait(self) -> int:
        self.returncode = 0
        return 0

    async def aclose(self) -> None:
        await self.wait()


@pytest.mark.anyio
async def test_stopping_a_sandbox_that_is_already_gone_is_not_an_error() -> None:
    gone = _AlreadyGone()
    await launch.stop(gone, grace=1)  # type: ignore[arg-type]
    assert gone.signalled == 1 and gone.returncode == 0


@pytest.mark.anyio
async def test_a_sandbox_that_cannot_be_started_is_a_tool_error_not_a_harness_failure(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    pool = SandboxPool(blocked / "workspaces")
    with pytest.raises(SandboxStartFailed, match="the workspace could not be created"):
        await pool.endpoint("sesn_x")
    assert pool.running() == []
