"""Devices and mounts: no device but the harmless ones, no mount, and no host path in the mount table.

The workspace is bound nosuid and nodev; as root it is a filesystem of its own (an image), so
``/proc/self/mountinfo`` shows it as the root of that filesystem, not as a host directory.
"""

from __future__ import annotations

import os

import pytest
from mcp import Client

from sandbox_server.workspace import AREA_MOUNTED, SESSION_MOUNT
from tests.escape.support import Sandbox, bash, requires_bwrap, still_answers, text

pytestmark = requires_bwrap
AS_ROOT = os.geteuid() == 0
HARMLESS_DEVICES = {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm"}


@pytest.mark.anyio
async def test_only_harmless_devices_exist(client: Client) -> None:
    listed = set(text(await bash(client, "ls /dev")).split())
    links = {"fd", "stdin", "stdout", "stderr", "core"}
    assert listed - links <= HARMLESS_DEVICES, listed
    for device in ("/dev/sda", "/dev/vda", "/dev/loop0", "/dev/mem", "/dev/kmsg", "/dev/loop-control"):
        result = text(await bash(client, f"head -c 1 {device} | wc -c"))
        assert result.strip().endswith("0") or "No such file" in result, device
    await still_answers(client)


@pytest.mark.anyio
async def test_device_nodes_cannot_be_made(client: Client, sandbox: Sandbox) -> None:
    result = await bash(client, "mknod disk b 254 0; mknod mem c 1 1; ls -l disk mem")
    assert "Operation not permitted" in text(result)
    assert not (sandbox.workspace / "disk").exists() and not (sandbox.workspace / "mem").exists()
    await still_answers(client)


@pytest.mark.anyio
async def test_the_workspace_is_nosuid_nodev_inside(client: Client) -> None:
    line = text(await bash(client, "grep ' /workspace ' /proc/self/mountinfo"))
    options = line.split()[5].split(",")
    assert "nosuid" in options and "nodev" in options
    await still_answers(client)


@pytest.mark.anyio
async def test_read_only_system_stays_unchanged(client: Client) -> None:
    before = sorted(os.listdir("/usr/bin"))
    result = await bash(
        client, "touch /usr/bin/evil; cp /bin/sh /usr/bin/sh2; echo x > /etc/profile; ls /usr/bin/evil"
    )
    assert "Read-only file system" in text(result)
    assert sorted(os.listdir("/usr/bin")) == before, "the host's /usr changed"
    await still_answers(client)


@pytest.mark.anyio
async def test_no_host_path_in_cmdline_or_mountinfo(client: Client, sandbox: Sandbox) -> None:
    cmdline = text(await bash(client, "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done"))
    mountinfo = text(await bash(client, "cat /proc/self/mountinfo"))
    host_parts = {
        str(sandbox.workspace),
        str(sandbox.workspace.parent),
        "pytest-of",
        "tether-egress",
        "tether-stage",
    }
    for part in host_parts:
        assert part not in cmdline, part
    workspace_line = next(line for line in mountinfo.splitlines() if " /workspace " in line)
    if AS_ROOT:
        # Its own filesystem: the mount's root within it is "/", and nothing names a host path.
        assert workspace_line.split()[3] == "/"
        for part in host_parts:
            assert part not in mountinfo, part
    else:
        # An unprivileged server cannot mount; bwrap's binds show the directory's path within its
        # filesystem (README, "Sandbox": what is not isolated): the workspace, and the session
        # area inside it, which says nothing more. Nothing else does.
        area = next(line for line in mountinfo.splitlines() if f" {SESSION_MOUNT} " in line)
        assert area.split()[3].endswith(f"/{AREA_MOUNTED}")
        others = [line for line in mountinfo.splitlines() if line not in (workspace_line, area)]
        assert not any(str(sandbox.workspace) in line for line in others)
    await still_answers(client)


@pytest.mark.anyio
async def test_sys_and_host_mount_table_are_absent(client: Client) -> None:
    result = text(await bash(client, "ls /sys/firmware /sys/kernel 2>&1; ls /proc/1/root/ | tr '\\n' ' '"))
    assert result.count("No such file or directory") == 2
    assert "workspace" in result and "root" not in result.split(), "pid 1's root is the sandbox's own"
    await still_answers(client)
