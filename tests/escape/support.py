"""Helpers of the escape suite: one real ``tether sandbox`` per test module, over MCP.

The suite is organised by class of attack, one module each. Every test asserts two things:
the attempt was contained *and* the host is unchanged, then that the sandbox still answers.
Limits are passed as CLI flags and kept small so the tests are fast. The suite runs as root
and, in CI, a second time as an unprivileged user (``.ci/run``).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from sandbox_server.bwrap_args import find_bwrap
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
    assert not result.is_error, text(result)
    assert text(result) == "alive\n", text(result)
    assert time.monotonic() - started < 10, "the sandbox answers promptly after the attempt"


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


_FLIP = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_PATH | os.O_DIRECTORY)
a, b, pause = sys.argv[2].encode(), sys.argv[3].encode(), float(sys.argv[4])
print("flipping", flush=True)
while True:
    if libc.renameat2(fd, a, fd, b, 2) != 0:  # RENAME_EXCHANGE: both names always exist
        sys.exit(ctypes.get_errno())
    time.sleep(pause)
"""


@contextmanager
def flipping(directory: Path, name: str, other: str, pause: float = 0.0005) -> Iterator[None]:
    """Swap ``name`` and ``other`` in ``directory`` atomically every ``pause`` seconds until the block ends.

    Make one a directory and the other a symlink out, and ``name`` flips between the two at any
    moment, the way the model's ``bash`` could. It runs in a process of its own (as the model's
    would), so its timing is not tied to ours by the GIL.
    """
    flipper = subprocess.Popen(
        [sys.executable, "-c", _FLIP, str(directory), name, other, str(pause)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert flipper.stdout is not None
    assert flipper.stdout.readline() == "flipping\n", "the flipper did not start"
    try:
        yield
    finally:
        flipper.kill()
        flipper.wait()
        assert flipper.returncode == -9, "the flipper stopped flipping"


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Everything under ``root`` (not following links): file bytes, link targets, directories.

    Compare two snapshots to assert the host is unchanged: nothing created, removed or modified.
    """
    found: dict[str, bytes | str] = {}
    for directory, dirs, files, dir_fd in os.fwalk(root):
        relative = os.path.relpath(directory, root)
        for name in dirs + files:  # fwalk counts a link to a directory as one (it never enters it)
            path = os.path.join(relative, name)
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                found[path] = "-> " + os.readlink(name, dir_fd=dir_fd)
            elif stat.S_ISDIR(info.st_mode):
                found[path] = "<dir>"
            else:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as handle:
                    found[path] = handle.read()
    return found


def reopen_directories(root: Path) -> None:
    """``chmod 700`` every directory under ``root`` (never through a link), so the test can read it all."""
    for _path, dirs, _files, dir_fd in os.fwalk(root):
        for name in dirs:
            if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                os.chmod(name, 0o700, dir_fd=dir_fd, follow_symlinks=False)


def clear(directory: Path) -> None:
    """Empty ``directory`` (a workspace between tests) without following links; closed modes reopened."""
    reopen_directories(directory)
    for entry in list(directory.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def seen_by(pid: int, path: Path) -> Path:
    """``path`` as process ``pid`` sees it (its mount namespace: a gateway's workspaces may be
    filesystems mounted there only)."""
    return Path(f"/proc/{pid}/root") / path.relative_to("/")
