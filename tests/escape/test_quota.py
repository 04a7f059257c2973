"""The workspace disk quota: it holds however the model writes.

As root each workspace is a filesystem of the quota's size and the kernel refuses the excess;
unprivileged, the walked soft quota kills the command within one poll interval. Either way
the host measures the workspace afterwards (``host_usage``), through the filesystem where
there is one and by walking it through descriptors otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mcp import Client

from sandbox_server import workspace_fs
from sandbox_server.limits import MiB
from sandbox_server.quota import disk_usage
from tests.escape.support import QUOTA, WATCHER_SLACK, Sandbox, bash, requires_bwrap, still_answers, text

pytestmark = requires_bwrap


@pytest.mark.anyio
async def test_filling_the_disk(client: Client, sandbox: Sandbox) -> None:
    one_file = await bash(client, "head -c 1G /dev/zero > big")
    assert one_file.is_error
    assert "disk quota of 16 MiB" in text(one_file)
    assert disk_usage(sandbox.workspace) <= QUOTA + 64 * 1024, "one file stops at the quota"

    refused = await client.call_tool("write", {"file_path": "more.txt", "content": "x" * 4096})
    assert refused.is_error
    assert "disk quota of 16 MiB" in text(refused)

    assert text(await bash(client, "rm big && echo freed")) == "freed\n"
    await still_answers(client)

    many = await bash(
        client, "mkdir -p fill && for i in $(seq 1 300); do head -c 1M /dev/zero > fill/$i; done"
    )
    assert many.is_error
    assert "disk quota of 16 MiB" in text(many)
    assert disk_usage(sandbox.workspace) < QUOTA + WATCHER_SLACK

    grow = await bash(client, "head -c 1M /dev/zero > fill/extra; sleep 1")
    assert grow.is_error, "an over-quota workspace may not grow"
    shrink = await bash(client, "rm -rf fill && echo clean")
    assert text(shrink) == "clean\n"
    assert disk_usage(sandbox.workspace) < 1 * MiB
    written = await client.call_tool("write", {"file_path": "more.txt", "content": "fits again"})
    assert not written.is_error
    await still_answers(client)


def host_usage(workspace: Path) -> int:
    measured = workspace_fs.capacity(workspace)
    return measured[0] if measured is not None else disk_usage(workspace)


def _ceiling() -> int:
    """What the workspace may reach: the quota itself when the kernel enforces it."""
    return QUOTA if os.geteuid() == 0 else QUOTA + WATCHER_SLACK


async def _clean(client: Client, sandbox: Sandbox) -> None:
    assert text(await bash(client, "chmod -R u+rwx . 2>/dev/null; rm -rf ./* && echo clean")) == "clean\n"
    assert host_usage(sandbox.workspace) < 1 * MiB


@pytest.mark.anyio
async def test_parallel_writers_cannot_outrun_the_quota(client: Client, sandbox: Sandbox) -> None:
    result = await bash(
        client, "for i in 1 2 3 4 5 6 7 8; do head -c 6M /dev/zero > par$i & done; wait; echo written"
    )
    assert result.is_error
    assert "disk quota of 16 MiB" in text(result)
    assert host_usage(sandbox.workspace) <= _ceiling()
    await _clean(client, sandbox)
    await still_answers(client)


@pytest.mark.anyio
async def test_a_tree_deeper_than_path_max_is_counted(client: Client, sandbox: Sandbox) -> None:
    name = "d" * 200
    result = await bash(
        client,
        f"for i in $(seq 1 25); do mkdir {name} && cd {name} || exit 9; done; "
        "for i in $(seq 1 30); do head -c 1M /dev/zero > f$i || break; done; pwd | wc -c",
        timeout_ms=20000,
    )
    assert result.is_error, "30 MiB deep in the tree went unnoticed"
    assert "disk quota of 16 MiB" in text(result)
    assert host_usage(sandbox.workspace) <= _ceiling()
    await _clean(client, sandbox)
    await still_answers(client)


@pytest.mark.anyio
async def test_a_directory_closed_to_reading_is_counted(client: Client, sandbox: Sandbox) -> None:
    result = await bash(
        client,
        "mkdir closed && chmod 300 closed && "
        "for i in $(seq 1 30); do head -c 1M /dev/zero > closed/f$i || break; sleep 0.05; done",
        timeout_ms=20000,
    )
    assert result.is_error, "30 MiB in a chmod 300 directory went unnoticed"
    assert "disk quota of 16 MiB" in text(result)
    assert host_usage(sandbox.workspace) <= _ceiling()
    await _clean(client, sandbox)
    await still_answers(client)


@pytest.mark.anyio
async def test_preallocation_and_sparse_files(client: Client, sandbox: Sandbox) -> None:
    allocated = await bash(client, "fallocate -l 64M blob; ls -s blob 2>/dev/null; true")
    assert host_usage(sandbox.workspace) <= _ceiling()
    refusals = ("File size limit exceeded", "No space left on device", "disk quota of 16 MiB")
    assert any(refusal in text(allocated) for refusal in refusals), text(allocated)
    sparse = await bash(
        client, "truncate -s 1T sparse && head -c 32M /dev/zero | dd of=sparse conv=notrunc 2>&1"
    )
    assert sparse.is_error
    assert host_usage(sandbox.workspace) <= _ceiling()
    await _clean(client, sandbox)
    await still_answers(client)
