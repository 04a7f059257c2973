"""Progress through the gateway: the client's progress token reaches the upstream (as a token
of the gateway's own) and every ``notifications/progress`` comes back to the client's callback.

Both client eras against a 2026-07-28 HTTP upstream (``modern``), a session-based one
(``old``) and a stdio one (``local``); each offers ``steps``, which reports COUNT steps.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.support.mcp_gateway_stack import (
    GatewayStack,
    start_gateway,
    start_upstream,
    stdio_transport,
    text_of,
)

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
UPSTREAMS = {"modern": "modern did", "old": "old did", "local": "stdio did"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    api_key = "mcpprogress-" + secrets.token_hex(12)
    modern = start_upstream("modern")
    old = start_upstream("old", legacy_only=True)
    gateway = start_gateway(tmp_path_factory.mktemp("mcp-progress"), api_key)
    stack = GatewayStack(gateway, api_key, {"modern": modern, "old": old})
    try:
        stack.register_url("modern", modern)
        stack.register_url("old", old)
        stack.post("/v1/mcp_servers", {"name": "local", "transport": stdio_transport()})
        for name in UPSTREAMS:
            stack.post("/v1/mcp_virtual_servers", {"name": name, "servers": [{"server": name}]})
        yield stack
    finally:
        gateway.stop()
        modern.stop()
        old.stop()


@pytest.mark.parametrize("upstream", list(UPSTREAMS))
@pytest.mark.parametrize("mode", MODES)
async def test_progress_is_relayed_from_every_upstream_kind(
    stack: GatewayStack, mode: str, upstream: str
) -> None:
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with stack.connect(upstream, mode) as client:
        result = await client.call_tool("steps", {"count": 3}, progress_callback=on_progress)
        assert text_of(result) == f"{UPSTREAMS[upstream]} 3 steps"
        # Each notification precedes the result on the same stream, so all have arrived.
        assert seen == [(step, 3, f"step {step} of 3") for step in (1, 2, 3)]
        # Without a progress token nothing is requested upstream, and the call still works.
        quiet = await client.call_tool("steps", {"count": 2})
        assert text_of(quiet) == f"{UPSTREAMS[upstream]} 2 steps" and len(seen) == 3
