"""Fixtures of the escape suite: one real ``tether sandbox`` per test module, reached over MCP."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
from mcp import Client

from tests.escape.support import LIMIT_FLAGS, Sandbox, command_cgroups
from tests.support.processes import running_sandbox, sandbox_client


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    root = tmp_path_factory.mktemp("escape")
    secret = "tether-secret-" + secrets.token_hex(12)
    secret_file = root / "host-secret.txt"
    secret_file.write_text(secret + "\n")
    workspace = root / "ws"
    args = ["sandbox", "--workspace", str(workspace), "--port", "0", *LIMIT_FLAGS]
    with running_sandbox(args, env={"TETHER_TEST_SECRET": secret}) as server:
        yield Sandbox(server, workspace, secret, secret_file)
    assert not command_cgroups(server.process.pid), "a command cgroup outlived the server"


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[Client]:
    async with sandbox_client(sandbox.url, sandbox.server.headers) as connected:
        await connected.call_tool("bash", {"restart": True})  # each test starts in /workspace
        yield connected
    assert sandbox.server.process.poll() is None, "the sandbox server died"
