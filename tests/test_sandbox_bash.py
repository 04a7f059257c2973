"""The ``bash`` tool on the bubblewrap backend: real ``bwrap`` processes behind an in-memory MCP client.

Also unit tests of the pieces the backend is built from (limits, output capping,
cgroup discovery, the bwrap command line), which need no processes.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from sandbox_server.bwrap import BubblewrapBash
from sandbox_server.bwrap_args import BWRAP_ENV, bwrap_argv, find_bwrap
from sandbox_server.cgroups import CgroupFactory, discover_layout
from sandbox_server.limits import MiB, SandboxLimits, add_limit_arguments, limits_from_args, parse_size
from sandbox_server.output import CappedOutput
from sandbox_server.server import build_server
from sandbox_server.shell import RESTARTED, parse_reported_cwd

pytestmark = pytest.mark.skipif(find_bwrap() is None, reason="bubblewrap is not installed")

LIMITS = SandboxLimits(timeout=10, output_limit=2000, output_ceiling=1 * MiB, disk_quota=8 * MiB)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


@pytest.fixture
async def client(workspace: Path) -> AsyncIterator[Client]:
    async with Client(build_server(workspace, limits=LIMITS)) as connected:
        yield connected


def _text(result: CallToolResult) -> str:
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def _bash(client: Client, command: str | None = None, **extra: object) -> CallToolResult:
    arguments: dict[str, object] = {**extra}
    if command is not None:
        arguments["command"] = command
    return await client.call_tool("bash", arguments)


# --------------------------------------------------------------------------- through MCP


@pytest.mark.anyio
async def test_output_stderr_and_exit_code(client: Client) -> None:
    ok = await _bash(client, "echo out; echo err >&2")
    assert not ok.is_error
    assert _text(ok) == "out\nerr\n"

    failed = await _bash(client, "echo partial; exit 3")
    assert not failed.is_error, "a non-zero exit is information, not a tool failure"
    assert _text(failed) == "partial\n[exit code 3]"

    silent = await _bash(client, "true")
    assert _text(silent) == "(no output)"

    syntax = await _bash(client, "if then")
    assert "syntax error" in _text(syntax)
    assert _text(syntax).endswith("[exit code 2]")


@pytest.mark.anyio
async def test_command_is_data_not_shell_code(client: Client) -> None:
    """Quotes, ``$1`` and friends reach bash unmangled; the server never splices the command into code."""
    result = await _bash(client, 'printf \'%s|\' "$0" "$#" \'a b\' "$(echo \'"x"\')"')
    assert _text(result) == 'bash|0|a b|"x"|'


@pytest.mark.anyio
async def test_working_directory_persists_and_restart_resets(client: Client, workspace: Path) -> None:
    assert _text(await _bash(client, "mkdir -p sub/deeper && cd sub")) == "(no output)"
    assert _text(await _bash(client, "pwd")) == "/workspace/sub\n"
    await _bash(client, "cd deeper; touch here")
    assert (workspace / "sub/deeper/here").exists()

    exited = await _bash(client, "cd /tmp; exit 4")
    assert _text(exited) == "[exit code 4]"
    assert _text(await _bash(client, "pwd")) == "/workspace/sub/deeper\n", "exit keeps the old cwd"

    restarted = await _bash(client, restart=True)
    assert not restarted.is_error
    assert _text(restarted) == RESTARTED
    assert _text(await _bash(client, "pwd")) == "/workspace\n"

    await _bash(client, "mkdir gone && cd gone")
    (workspace / "gone").rmdir()
    moved = await _bash(client, "pwd")
    assert _text(moved).endswith("/workspace\n")
    assert "gone" in _text(moved)


@pytest.mark.anyio
async def test_restart_with_command_and_missing_command(client: Client) -> None:
    await _bash(client, "cd /usr")
    assert _text(await _bash(client, "pwd", restart=True)) == "/workspace\n"
    missing = await _bash(client)
    assert missing.is_error
    assert "command is required" in _text(missing)


@pytest.mark.anyio
async def test_timeout_ms_is_honoured(client: Client) -> None:
    started = time.monotonic()
    result = await _bash(client, "echo before; sleep 30", timeout_ms=500)
    elapsed = time.monotonic() - started
    assert result.is_error
    assert _text(result) == (
        "before\n[error: Command timed out after 0.5 s; it and every process it started were killed.]"
    )
    assert elapsed < 5
    longer = await _bash(client, "sleep 0.2; echo done", timeout_ms=5000)
    assert _text(longer) == "done\n"


@pytest.mark.anyio
async def test_files_from_bash_are_usable_by_file_tools(client: Client, workspace: Path) -> None:
    """Commands run as uid 1000 in a user namespace; what they create belongs to the server's uid."""
    await _bash(client, "mkdir -p made && printf 'one\\ntwo\\n' > made/file.txt && chmod 600 made/file.txt")
    assert os.stat(workspace / "made/file.txt").st_uid == os.getuid()
    read = await client.call_tool("read", {"file_path": "made/file.txt"})
    assert _text(read) == "     1\tone\n     2\ttwo\n"
    edited = await client.call_tool(
        "edit", {"file_path": "made/file.txt", "old_string": "two", "new_string": "2"}
    )
    assert not edited.is_error
    await client.call_tool("write", {"file_path": "made/new.txt", "content": "from the tool\n"})
    assert _text(await _bash(client, "cat made/file.txt made/new.txt && echo more >> made/new.txt")) == (
        "one\n2\nfrom the tool\n"
    )
    assert _text(await _bash(client, "id -un; id -u")) == "sandbox\n1000\n"


@pytest.mark.anyio
async def test_long_output_keeps_head_and_tail(client: Client) -> None:
    result = await _bash(client, "seq 1 20000")
    text = _text(result)
    assert not result.is_error
    assert text.startswith("1\n2\n3\n")
    assert text.endswith("19999\n20000\n")
    assert "bytes of output omitted ...]" in text
    assert len(text) < LIMITS.output_limit + 100


@pytest.mark.anyio
async def test_write_refused_over_quota(client: Client, workspace: Path) -> None:
    big = "x" * (9 * MiB)
    refused = await client.call_tool("write", {"file_path": "big.txt", "content": big})
    assert refused.is_error
    assert "disk quota of 8 MiB" in _text(refused)
    assert not (workspace / "big.txt").exists()
    small = await client.call_tool("write", {"file_path": "small.txt", "content": "fine"})
    assert not small.is_error


@pytest.mark.anyio
async def test_commands_run_one_at_a_time_per_session(workspace: Path) -> None:
    import anyio

    backend = BubblewrapBash(workspace, LIMITS)
    results: list[str] = []

    async def one(tag: str) -> None:
        result = await backend.run(f"echo {tag}-start; sleep 0.2; echo {tag}-end", False, None)
        results.append(_text(result))

    async with anyio.create_task_group() as group:
        group.start_soon(one, "a")
        group.start_soon(one, "b")
    assert sorted(results) == ["a-start\na-end\n", "b-start\nb-end\n"]


@pytest.mark.anyio
async def test_cancelled_call_leaves_nothing_behind(workspace: Path) -> None:
    """An interrupted tool call (the MCP request cancelled) still kills the command and removes its cgroup."""
    import anyio

    backend = BubblewrapBash(workspace, LIMITS)
    os.mkfifo(workspace / "started")
    marker = "tether-cancel-" + os.urandom(4).hex()
    async with anyio.create_task_group() as group:
        group.start_soon(backend.run, f"echo up > started; exec -a {marker} sleep 60", False, None)
        assert await anyio.to_thread.run_sync((workspace / "started").read_text) == "up\n"
        group.cancel_scope.cancel()
    assert not _processes_with(marker)
    assert not _own_command_cgroups()
    assert _text(await backend.run("echo next", False, None)) == "next\n"


@pytest.mark.anyio
async def test_without_cgroups_rlimits_stand_in(workspace: Path) -> None:
    """Where cgroups cannot be used, memory is bounded per process by RLIMIT_AS."""
    limits = SandboxLimits(timeout=10, memory=256 * MiB)
    backend = BubblewrapBash(workspace, limits, cgroups=CgroupFactory(discover=False))
    assert _text(await backend.run("echo works", False, None)) == "works\n"
    hog = await backend.run("python3 -c 'bytearray(512 * 1024 * 1024)'", False, None)
    assert "MemoryError" in _text(hog)
    assert _text(hog).endswith("[exit code 1]")


@pytest.mark.anyio
async def test_a_sandbox_that_cannot_start_is_an_error_result(workspace: Path) -> None:
    backend = BubblewrapBash(workspace, LIMITS, bwrap=str(workspace / "no-such-bwrap"))
    result = await backend.run("true", False, None)
    assert result.is_error
    assert _text(result) == "could not start the sandbox: No such file or directory"


def _own_command_cgroups() -> list[Path]:
    return list(Path("/sys/fs/cgroup/pids").glob(f"tether-{os.getpid()}-*"))


def _processes_with(marker: str) -> list[str]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


# --------------------------------------------------------------------------- pieces


def test_limits_defaults_flags_and_timeouts() -> None:
    limits = SandboxLimits()
    assert (limits.timeout, limits.max_timeout, limits.output_limit) == (120, 600, 30_000)
    assert (limits.memory, limits.pids, limits.disk_quota) == (1024 * MiB, 256, 1024 * MiB)
    assert limits.timeout_for(None) == 120
    assert limits.timeout_for(0) == 120
    assert limits.timeout_for(1500) == 1.5
    assert limits.timeout_for(900_000) == 600
    parser = argparse.ArgumentParser()
    add_limit_arguments(parser)
    parsed = limits_from_args(parser.parse_args(["--memory", "256M", "--pids", "32", "--disk-poll-ms", "20"]))
    assert (parsed.memory, parsed.pids, parsed.disk_poll_interval) == (256 * MiB, 32, 0.02)
    assert parse_size("16MiB") == 16 * MiB
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("lots")
    with pytest.raises(ValueError):
        SandboxLimits(timeout=700)


def test_capped_output() -> None:
    out = CappedOutput(10)
    out.add(b"0123")
    assert out.text() == "0123"
    for _ in range(1000):
        out.add(b"abcdefgh")
    out.add(b"END")
    assert out.total == 8007
    assert out.text() == "0123a\n[... 7997 bytes of output omitted ...]\nghEND"


def test_reported_cwd_is_validated() -> None:
    assert parse_reported_cwd(b"/workspace/a b\n") == "/workspace/a b"
    assert parse_reported_cwd(b"") is None
    assert parse_reported_cwd(b"relative\n") is None
    assert parse_reported_cwd(b"/x\x00y\n") is None


def test_cgroup_layout_v1_nests_under_own_cgroup(tmp_path: Path) -> None:
    (tmp_path / "memory/svc/one").mkdir(parents=True)
    (tmp_path / "pids").mkdir()
    mountinfo = (
        f"30 25 0:26 / {tmp_path}/pids rw,relatime - cgroup cgroup rw,pids\n"
        f"31 25 0:27 / {tmp_path}/memory rw,relatime - cgroup cgroup rw,memory\n"
        f"32 25 0:28 / {tmp_path}/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    layout = discover_layout(mountinfo, "8:pids:/\n4:memory:/svc/one\n0::/\n")
    assert layout is not None
    assert layout.version == 1
    assert layout.pids_parent == tmp_path / "pids"
    assert layout.memory_parent == tmp_path / "memory/svc/one"


def test_cgroup_layout_v2(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    mountinfo = f"30 25 0:26 / {tmp_path} rw - cgroup2 cgroup2 rw,nsdelegate\n"
    layout = discover_layout(mountinfo, "0::/svc\n")
    assert layout is not None
    assert (layout.version, layout.pids_parent, layout.memory_parent) == (
        2,
        tmp_path / "svc",
        tmp_path / "svc",
    )
    assert discover_layout(mountinfo.replace("cgroup2 cgroup2", "ext4 /dev/sda"), "0::/svc\n") is None


def test_bwrap_command_line(tmp_path: Path) -> None:
    argv = bwrap_argv(
        "/usr/bin/bwrap",
        workspace_fd=9,
        etc_fds={"passwd": 7, "hosts": 8},
        limits=SandboxLimits(tmp_size=64 * MiB),
        inner=["bash", "-c", "true"],
    )
    joined = " ".join(argv)
    for flag in (
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--cap-drop ALL",
        "--unshare-user",
        "--uid 1000",
        "--clearenv",
        "--proc /proc",
        "--dev /dev",
        f"--size {64 * MiB} --perms 1777 --tmpfs /tmp",
        "--bind-fd 9 /workspace",
        "--ro-bind /proc/sys /proc/sys",
        "--ro-bind /usr /usr",
        "--setenv HOME /workspace",
        "--perms 0644 --ro-bind-data 8 /etc/hosts --perms 0644 --ro-bind-data 7 /etc/passwd",
    ):
        assert flag in joined
    assert "--share-net" not in argv
    assert argv[-4:] == ["--", "bash", "-c", "true"]
    assert BWRAP_ENV == {}
