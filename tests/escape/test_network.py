"""Network reachability without egress: loopback only, nothing on the host is reachable."""

from __future__ import annotations

import socket

import pytest
from mcp import Client

from tests.escape.support import bash, requires_bwrap, still_answers, text

pytestmark = requires_bwrap


@pytest.mark.anyio
async def test_no_network(client: Client) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        links = await bash(client, "ls /sys/class/net 2>/dev/null || cat /proc/net/dev")
        assert "eth" not in text(links)
        assert "lo" in text(links)

        local = await bash(client, f"echo hi > /dev/tcp/127.0.0.1/{port}")
        assert "Connection refused" in text(local)
        with pytest.raises(BlockingIOError):
            listener.accept()

        outside = await bash(
            client,
            "python3 -c 'import socket; socket.create_connection((\"1.1.1.1\", 80), timeout=3)'",
        )
        assert "Network is unreachable" in text(outside)
        curl = await bash(client, "curl -sS -m 3 http://example.com/")
        assert curl.content and text(curl).rstrip().endswith("]")
        assert "exit code" in text(curl)
    finally:
        listener.close()
    await still_answers(client)
