"""Environment and host paths: the sandbox sees neither the server's secrets nor the host's files."""

from __future__ import annotations

import pytest
from mcp import Client

from tests.escape.support import Sandbox, bash, environ_of, exists, requires_bwrap, still_answers, text

pytestmark = requires_bwrap


@pytest.mark.anyio
async def test_server_environment_is_not_visible(client: Client, sandbox: Sandbox) -> None:
    assert sandbox.secret in environ_of(sandbox.server.process.pid), "the secret is there to be stolen"
    for command in (
        "env",
        "cat /proc/1/environ",
        "cat /proc/*/environ",
        "cat /proc/self/environ",
        "ps eww -A 2>&1 || true",
        "cat /proc/1/cmdline; ls -la /proc/1/cwd /proc/1/root",
        "grep -rs tether-secret /etc /tmp /workspace 2>/dev/null | head",
    ):
        result = await bash(client, command)
        assert sandbox.secret not in text(result), command
        assert "TETHER_TEST_SECRET" not in text(result), command
    env = text(await bash(client, "env | sort"))
    assert "HOME=/workspace" in env
    assert "/work/" not in env
    assert text(await bash(client, "tr '\\0' '\\n' < /proc/1/environ | wc -c")) == "0\n"
    await still_answers(client)


@pytest.mark.anyio
async def test_host_files_are_not_visible(client: Client, sandbox: Sandbox) -> None:
    shadow = await bash(client, "cat /etc/shadow")
    assert "No such file or directory" in text(shadow)
    assert text(shadow).endswith("[exit code 1]")

    for path in ("/root", "/work", "/home", "/var", "/opt", "/srv", "/sys", str(sandbox.secret_file)):
        listed = await bash(client, f"ls -a {path}")
        assert "No such file or directory" in text(listed), path
    # /mnt holds only the session's own read-only area, empty until the gateway places something.
    assert text(await bash(client, "ls -A /mnt; ls -A /mnt/session; touch /mnt/session/x")) == (
        "session\ntouch: cannot touch '/mnt/session/x': Read-only file system\n[exit code 1]"
    )

    listing = "bin\ndev\netc\nlib\nlib64\nmnt\nproc\nsbin\ntmp\nusr\nworkspace\n"
    assert text(await bash(client, "ls /")) == listing
    passwd = text(await bash(client, "cat /etc/passwd"))
    assert "sandbox:x:1000:1000" in passwd
    assert len(passwd.splitlines()) == 3, "host accounts must not be listed"

    readonly = await bash(client, "touch /usr/evil; echo x > /etc/evil; ls /usr/evil /etc/evil")
    assert "Read-only file system" in text(readonly)
    assert not exists("/usr/evil")
    await still_answers(client)
