"""Links and races: nothing the model writes makes the server open a path outside the workspace."""

from __future__ import annotations

import pytest
from mcp import Client

from tests.escape.support import Sandbox, bash, requires_bwrap, still_answers, text

pytestmark = requires_bwrap


@pytest.mark.anyio
async def test_traversal_and_symlinks_do_not_leave_the_workspace(client: Client, sandbox: Sandbox) -> None:
    traversal = await bash(client, f"cat /workspace/../../..{sandbox.secret_file}")
    assert "No such file or directory" in text(traversal)
    assert sandbox.secret not in text(traversal)

    links = await bash(
        client,
        f"ln -s {sandbox.secret_file} secret-link && ln -s /etc/passwd passwd-link "
        "&& ln -s ../../../.. up && cat secret-link; echo status=$?",
    )
    assert "status=1" in text(links), "inside the sandbox the host path does not exist"
    hardlink = await bash(client, "ln /etc/hostname hard-link")
    assert text(hardlink).endswith("[exit code 1]")
    assert not (sandbox.workspace / "hard-link").exists()

    for path in ("secret-link", "passwd-link", f"up{sandbox.secret_file}", "up/etc/shadow"):
        read = await client.call_tool("read", {"file_path": path})
        assert read.is_error, path
        assert "outside the workspace" in text(read), path
        assert sandbox.secret not in text(read)
    written = await client.call_tool("write", {"file_path": "secret-link", "content": "overwrite"})
    assert written.is_error
    assert sandbox.secret_file.read_text() == sandbox.secret + "\n"
    await bash(client, "rm -f secret-link passwd-link up")
    await still_answers(client)
