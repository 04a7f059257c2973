"""Attempts to get out of the bubblewrap sandbox, against a real ``tether sandbox`` process over MCP.

Every test asserts two things: the attempt was contained, and the sandbox still
answers a simple call afterwards. Limits are passed as CLI flags and kept small
so the tests are fast.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from sandbox_server.bwrap import find_bwrap
from sandbox_server.cgroups import CGROUP_PREFIX, discover_layout
from sandbox_server.limits import MiB
from sandbox_server.quota import disk_usage
from tests.support.processes import ServerProcess, running_server

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed")
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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = tmp_path_factory.mktemp("escape")
    secret = "tether-secret-" + secrets.token_hex(12)
    secret_file = root / "host-secret.txt"
    secret_file.write_text(secret + "\n")
    workspace = root / "ws"
    args = ["sandbox", "--workspace", str(workspace), "--port", "0", *LIMIT_FLAGS]
    with running_server(args, env={"TETHER_TEST_SECRET": secret}) as server:
        yield Sandbox(server, workspace, secret, secret_file)
    assert not _command_cgroups(server.process.pid), "a command cgroup outlived the server"


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[Client]:
    async with Client(sandbox.url) as connected:
        await connected.call_tool("bash", {"restart": True})  # each test starts in /workspace
        yield connected
    assert sandbox.server.process.poll() is None, "the sandbox server died"


def _text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def _bash(client: Client, command: str, timeout_ms: int | None = None) -> CallToolResult:
    arguments: dict[str, object] = {"command": command}
    if timeout_ms is not None:
        arguments["timeout_ms"] = timeout_ms
    return await client.call_tool("bash", arguments)


async def _still_answers(client: Client) -> None:
    started = time.monotonic()
    result = await _bash(client, "echo alive")
    assert not result.is_error
    assert _text(result) == "alive\n"
    assert time.monotonic() - started < 3


def _command_cgroups(server_pid: int) -> list[Path]:
    """Per-command cgroups of the server that still exist."""
    layout = discover_layout(Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text())
    if layout is None:
        return []
    return [p for parent in layout.parents for p in parent.glob(f"{CGROUP_PREFIX}{server_pid}-*")]


def _environ_of(pid: int) -> str:
    return Path(f"/proc/{pid}/environ").read_text()


def _exists(path: str) -> bool:
    return Path(path).exists()


def _host_can_start_processes() -> bool:
    return subprocess.run(["true"], check=False).returncode == 0


def _processes_with(marker: str) -> list[int]:
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


# --------------------------------------------------------------------------- the server's secrets


@pytest.mark.anyio
async def test_server_environment_is_not_visible(client: Client, sandbox: Sandbox) -> None:
    assert sandbox.secret in _environ_of(sandbox.server.process.pid), "the secret is there to be stolen"
    for command in (
        "env",
        "cat /proc/1/environ",
        "cat /proc/*/environ",
        "cat /proc/self/environ",
        "ps eww -A 2>&1 || true",
        "cat /proc/1/cmdline; ls -la /proc/1/cwd /proc/1/root",
        "grep -rs tether-secret /etc /tmp /workspace 2>/dev/null | head",
    ):
        result = await _bash(client, command)
        assert sandbox.secret not in _text(result), command
        assert "TETHER_TEST_SECRET" not in _text(result), command
    env = _text(await _bash(client, "env | sort"))
    assert "HOME=/workspace" in env
    assert "/work/" not in env
    assert _text(await _bash(client, "tr '\\0' '\\n' < /proc/1/environ | wc -c")) == "0\n"
    await _still_answers(client)


@pytest.mark.anyio
async def test_host_files_are_not_visible(client: Client, sandbox: Sandbox) -> None:
    shadow = await _bash(client, "cat /etc/shadow")
    assert "No such file or directory" in _text(shadow)
    assert _text(shadow).endswith("[exit code 1]")

    for path in ("/root", "/work", "/home", "/var", "/opt", "/srv", "/mnt", "/sys", str(sandbox.secret_file)):
        listed = await _bash(client, f"ls -a {path}")
        assert "No such file or directory" in _text(listed), path

    assert (
        _text(await _bash(client, "ls /")) == "bin\ndev\netc\nlib\nlib64\nproc\nsbin\ntmp\nusr\nworkspace\n"
    )
    passwd = _text(await _bash(client, "cat /etc/passwd"))
    assert "sandbox:x:1000:1000" in passwd
    assert len(passwd.splitlines()) == 3, "host accounts must not be listed"

    readonly = await _bash(client, "touch /usr/evil; echo x > /etc/evil; ls /usr/evil /etc/evil")
    assert "Read-only file system" in _text(readonly)
    assert not _exists("/usr/evil")
    await _still_answers(client)


@pytest.mark.anyio
async def test_traversal_and_symlinks_do_not_leave_the_workspace(client: Client, sandbox: Sandbox) -> None:
    traversal = await _bash(client, f"cat /workspace/../../..{sandbox.secret_file}")
    assert "No such file or directory" in _text(traversal)
    assert sandbox.secret not in _text(traversal)

    links = await _bash(
        client,
        f"ln -s {sandbox.secret_file} secret-link && ln -s /etc/passwd passwd-link "
        "&& ln -s ../../../.. up && cat secret-link; echo status=$?",
    )
    assert "status=1" in _text(links), "inside the sandbox the host path does not exist"
    hardlink = await _bash(client, "ln /etc/hostname hard-link")
    assert _text(hardlink).endswith("[exit code 1]")
    assert not (sandbox.workspace / "hard-link").exists()

    for path in ("secret-link", "passwd-link", f"up{sandbox.secret_file}", "up/etc/shadow"):
        read = await client.call_tool("read", {"file_path": path})
        assert read.is_error, path
        assert "outside the workspace" in _text(read), path
        assert sandbox.secret not in _text(read)
    written = await client.call_tool("write", {"file_path": "secret-link", "content": "overwrite"})
    assert written.is_error
    assert sandbox.secret_file.read_text() == sandbox.secret + "\n"
    await _bash(client, "rm -f secret-link passwd-link up")
    await _still_answers(client)


# --------------------------------------------------------------------------- resource exhaustion


@pytest.mark.anyio
async def test_fork_bomb_is_bounded(client: Client, sandbox: Sandbox) -> None:
    started = time.monotonic()
    classic = await _bash(client, ":(){ :|:& };:")
    assert time.monotonic() - started < 10
    assert classic.content  # it ends (its shell returns at once and the namespace takes the rest)

    sustained = await _bash(client, ":(){ :|:& };:; sleep 30", timeout_ms=2000)
    assert sustained.is_error
    text = _text(sustained)
    assert "process limit (64)" in text
    assert "timed out after 2 s" in text

    assert not _command_cgroups(sandbox.server.process.pid)
    assert _host_can_start_processes()
    await _still_answers(client)


@pytest.mark.anyio
async def test_infinite_loop_times_out(client: Client) -> None:
    started = time.monotonic()
    looping = await _bash(client, "while :; do :; done", timeout_ms=1000)
    assert time.monotonic() - started < 5
    assert looping.is_error
    assert "Command timed out after 1 s" in _text(looping)
    await _still_answers(client)


@needs_python
@pytest.mark.anyio
async def test_memory_is_bounded(client: Client) -> None:
    hog = await _bash(client, "python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))'")
    assert hog.is_error
    assert "out of memory (limit 128 MiB)" in _text(hog)
    assert "536870912" not in _text(hog)
    await _still_answers(client)


@pytest.mark.anyio
async def test_a_gigabyte_of_output_is_capped(client: Client) -> None:
    started = time.monotonic()
    flood = await _bash(client, "head -c 1G /dev/zero | tr '\\0' a")
    assert time.monotonic() - started < 10
    assert flood.is_error
    text = _text(flood)
    assert "bytes of output omitted ...]" in text
    assert "more than 1 MiB of output and was killed" in text
    assert len(text) < OUTPUT_LIMIT + 300
    await _still_answers(client)


@pytest.mark.anyio
async def test_filling_the_disk(client: Client, sandbox: Sandbox) -> None:
    one_file = await _bash(client, "head -c 1G /dev/zero > big")
    assert one_file.is_error
    assert "disk quota of 16 MiB" in _text(one_file)
    assert disk_usage(sandbox.workspace) <= QUOTA + 64 * 1024, "one file stops at the quota"

    refused = await client.call_tool("write", {"file_path": "more.txt", "content": "x" * 4096})
    assert refused.is_error
    assert "disk quota of 16 MiB" in _text(refused)

    assert _text(await _bash(client, "rm big && echo freed")) == "freed\n"
    await _still_answers(client)

    many = await _bash(
        client, "mkdir -p fill && for i in $(seq 1 300); do head -c 1M /dev/zero > fill/$i; done"
    )
    assert many.is_error
    assert "disk quota of 16 MiB" in _text(many)
    assert disk_usage(sandbox.workspace) < QUOTA + WATCHER_SLACK

    grow = await _bash(client, "head -c 1M /dev/zero > fill/extra; sleep 1")
    assert grow.is_error, "an over-quota workspace may not grow"
    shrink = await _bash(client, "rm -rf fill && echo clean")
    assert _text(shrink) == "clean\n"
    assert disk_usage(sandbox.workspace) < 1 * MiB
    written = await client.call_tool("write", {"file_path": "more.txt", "content": "fits again"})
    assert not written.is_error
    await _still_answers(client)


# --------------------------------------------------------------------------- lifetime and network


@pytest.mark.anyio
async def test_background_processes_do_not_outlive_their_command(client: Client, sandbox: Sandbox) -> None:
    marker = "tether-bg-" + secrets.token_hex(6)
    started = await _bash(
        client,
        f"(exec -a {marker} sleep 300) & "
        "(while :; do echo tick >> ticks.log; sleep 0.01; done) & "
        "nohup setsid sleep 300 >/dev/null 2>&1 & "
        "sleep 0.1; echo started",
    )
    assert _text(started) == "started\n"
    assert not _processes_with(marker)
    assert not _command_cgroups(sandbox.server.process.pid)
    size = (sandbox.workspace / "ticks.log").stat().st_size
    assert size > 0
    await _bash(client, "sleep 0.3")
    assert (sandbox.workspace / "ticks.log").stat().st_size == size, "the background loop kept writing"
    await _still_answers(client)


@needs_python
@pytest.mark.anyio
async def test_no_network(client: Client) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        links = await _bash(client, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
        assert "eth" not in _text(links)
        assert "lo" in _text(links)

        local = await _bash(client, f"echo hi > /dev/tcp/127.0.0.1/{port}")
        assert "Connection refused" in _text(local)
        with pytest.raises(BlockingIOError):
            listener.accept()

        outside = await _bash(
            client,
            "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 80), timeout=3)'",
        )
        assert "Network is unreachable" in _text(outside)
        curl = await _bash(client, "curl -sS -m 3 http://example.com/")
        assert curl.content and _text(curl).rstrip().endswith("]")
        assert "exit code" in _text(curl)
    finally:
        listener.close()
    await _still_answers(client)
