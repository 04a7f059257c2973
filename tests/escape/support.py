"""Helpers of the escape suite: one real ``tether sandbox`` per test module, over MCP.

The suite is organised by class of attack, one module each. Every test asserts two things:
the attempt was contained *and* the host is unchanged, then that the sandbox still answers.
Limits are passed as CLI flags and kept small so the tests are fast. The suite runs as root
and, in CI, a second time as an unprivileged user (``.ci/run``).
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from sandbox_server.bwrap import find_bwrap
from sandbox_server.cgroups import CGROUP_PREFIX, discover_layout
from sandbox_server.limits import MiB
from tests.support.processes import ServerProcess

requires_bwrap = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed")
needs_python = pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="no /usr/bin/python3")

QUOTA = 16 * MiB
OUTPUT_LIMIT = 2000
LIMIT_FLAGS = [
    "--timeout", "5",
    "--pids", "64",
    "--memory", "128M",
    "--disk-quota", "16M",
    "--output-limit", str(OUTPUT_LIMIT),
    "--output-ceiling", "1M",
    "--tmp-size", "16M",
    "--disk-poll-ms", "20",
]  # fmt: skip
WATCHER_SLACK = 48 * MiB
"""How far a fast writer may overshoot the soft quota in one poll interval (generous for slow CI disks)."""


@dataclass
class Sandbox:
    server: ServerProcess
    workspace: Path
    secret: str
    secret_file: Path

    @property
    def url(self) -> str:
        return self.server.url + "/mcp"


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def bash(client: Client, command: str, timeout_ms: int | None = None) -> CallToolResult:
    arguments: dict[str, object] = {"command": command}
    if timeout_ms is not None:
        arguments["timeout_ms"] = timeout_ms
    return await client.call_tool("bash", arguments)


async def still_answers(client: Client) -> None:
    started = time.monotonic()
    result = await bash(client, "echo alive")
    assert not result.is_error
    assert text(result) == "alive\n"
    assert time.monotonic() - started < 3


def command_cgroups(server_pid: int) -> list[Path]:
    """Per-command cgroups of the server that still exist."""
    layout = discover_layout(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())
    if layout is None:
        return []
    return [p for parent in layout.parents for p in parent.glob(f"{CGROUP_PREFIX}{server_pid}-*")]


def environ_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_text()


def exists(path: str) -> bool:
    return Path(path).exists()


def host_can_start_processes() -> bool:
    return subprocess.run(["true"], check=False).returncode == 0


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found
