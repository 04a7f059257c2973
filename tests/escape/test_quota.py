"""The workspace disk quota."""

from __future__ import annotations

import pytest
from mcp import Client

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
