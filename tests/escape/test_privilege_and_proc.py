"""Privilege and /proc: the sandbox never holds host root or any host capability.

Run as root (a container or a systemd unit, the usual case) the sandbox must still be an
unprivileged host uid; run as an ordinary user it is that user. Each attempt is checked from
the host too: the knob still has its value, the planted file cannot give anyone root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import anyio
import pytest
from mcp import Client

from sandbox_server.identity import DEFAULT_UID_RANGE
from tests.escape.support import Sandbox, bash, requires_bwrap, still_answers, text

pytestmark = requires_bwrap
AS_ROOT = os.geteuid() == 0
KNOBS = (
    "/proc/sys/kernel/core_pattern",
    "/proc/sys/kernel/printk",
    "/proc/sys/vm/drop_caches",
    "/proc/sys/kernel/hostname",
    "/proc/sys/fs/protected_symlinks",
)


def _host_value(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:  # write-only knobs (drop_caches) cannot be read back
        return f"<{exc.errno}>"


def _expected_uid() -> range:
    return DEFAULT_UID_RANGE if AS_ROOT else range(os.getuid(), os.getuid() + 1)


@pytest.mark.anyio
async def test_files_the_sandbox_makes_belong_to_an_unprivileged_host_uid(
    client: Client, sandbox: Sandbox
) -> None:
    assert text(await bash(client, "touch owned && mkdir -p made && echo done")) == "done\n"
    for name in ("owned", "made"):
        info = (sandbox.workspace / name).lstat()
        assert info.st_uid != 0 and info.st_uid in _expected_uid(), name
    root = sandbox.workspace.stat()
    assert root.st_uid in _expected_uid()
    assert stat.S_IMODE(root.st_mode) == 0o700, "no other local user may enter the workspace"
    await still_answers(client)


@pytest.mark.anyio
async def test_no_capability_and_no_new_privileges_inside(client: Client) -> None:
    status = text(await bash(client, "grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status"))
    fields = dict(line.split(":\t") for line in status.strip().splitlines())
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapAmb"] == "0000000000000000"
    assert fields["NoNewPrivs"] == "1"
    await still_answers(client)


@pytest.mark.anyio
@pytest.mark.parametrize("knob", KNOBS)
async def test_kernel_knobs_cannot_be_written(client: Client, knob: str) -> None:
    before = _host_value(knob)
    result = await bash(client, f"echo 1 > {knob} && echo WROTE")
    assert "WROTE" not in text(result)
    assert "Read-only file system" in text(result) or "Permission denied" in text(result)
    assert _host_value(knob) == before, "the host's value changed"
    await still_answers(client)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path", ["/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/sched_debug"]
)
async def test_sensitive_proc_files_are_masked(client: Client, path: str) -> None:
    result = text(await bash(client, f"head -c 64 {path} | od -c | head -3; echo end"))
    assert result.splitlines()[-1] == "end"
    assert (
        result.splitlines()[0] in ("end", "0000000")
        or "Permission denied" in result
        or ("No such file" in result)
    ), result
    await still_answers(client)


@pytest.mark.anyio
async def test_sysrq_trigger_and_irq_cannot_be_used(client: Client) -> None:
    result = text(
        await bash(client, "echo h > /proc/sysrq-trigger; echo 1 > /proc/irq/default_smp_affinity; echo")
    )
    assert "Read-only file system" in result or "Permission denied" in result or "No such file" in result
    await still_answers(client)


@pytest.mark.anyio
async def test_a_planted_setuid_binary_gives_nobody_root(client: Client, sandbox: Sandbox) -> None:
    planted = await bash(client, "cp /usr/bin/id planted && chmod 6755 planted; ./planted -u")
    assert text(planted).startswith("1000"), "inside, it is the sandbox user (setuid to itself at most)"
    info = (sandbox.workspace / "planted").stat()
    assert info.st_uid != 0 and info.st_gid != 0, "a setuid bit on a file root owns would be host root"
    if AS_ROOT:
        assert os.statvfs(sandbox.workspace).f_flag & os.ST_NOSUID, "the workspace is nosuid on the host too"
        ran = await anyio.run_process(
            ["runuser", "-u", "nobody", "--", str(sandbox.workspace / "planted"), "-u"], check=False
        )
        assert ran.stdout.strip() != b"0", "another local user ran it and became root"
    await bash(client, "rm -f planted")
    await still_answers(client)


@pytest.mark.anyio
async def test_root_only_files_under_read_only_binds_stay_closed(client: Client) -> None:
    result = text(
        await bash(client, "ls -la /etc/ssl/private 2>&1; cat /etc/ssl/private/* 2>&1 | head -c 200")
    )
    assert "BEGIN" not in result and "PRIVATE KEY" not in result
    await still_answers(client)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "attempt",
    [
        "unshare -U -r true",
        "unshare -m true",
        "python3 -c 'import os; os.setuid(0)'",
        "python3 -c 'import os; os.chroot(\"/tmp\")'",
        "mount -t tmpfs none /tmp",
        "mount --bind /usr /tmp",
        "mount -o remount,rw /usr",
    ],
)
async def test_privileged_operations_fail(client: Client, attempt: str) -> None:
    result = await bash(client, f"{attempt} && echo ESCALATED")
    assert "ESCALATED" not in text(result)
    assert "exit code" in text(result)
    await still_answers(client)


@pytest.mark.anyio
async def test_host_processes_cannot_be_signalled(client: Client, sandbox: Sandbox) -> None:
    server = sandbox.server.process.pid
    result = text(await bash(client, f"kill -9 {server}; kill -0 1 && echo own-init-only"))
    assert "No such process" in result
    assert "own-init-only" in result, "pid 1 is the sandbox's own init"
    assert sandbox.server.process.poll() is None, "the server was killed from inside"
    await still_answers(client)
