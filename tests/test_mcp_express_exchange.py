"""The express lane's exchange with the client, on its own: one response start, whatever the
timing, and SSE only when progress comes or the call runs long.

``_Exchange`` is driven with an in-memory ASGI ``send``/``receive`` and a short
``SSE_COMMIT_SECONDS``, so the deadline can land while an answer is being sent.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp.types as mcp_types
import pytest
from starlette.types import Message

from gateway.mcp_gateway import express
from gateway.mcp_gateway.express import Emit, ExpressCall, _Exchange

pytestmark = pytest.mark.anyio
CALL = ExpressCall("req-1", "add", {}, None, "2026-07-28")
RESULT = mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text="3")])


def _finished(result: mcp_types.CallToolResult, version: str) -> dict[str, Any]:
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


class Client:
    """An ASGI client whose first send takes ``slow`` seconds (a slow network), and never leaves."""

    def __init__(self, slow: float = 0.0) -> None:
        self.sent: list[Message] = []
        self.slow = slow

    async def send(self, message: Message) -> None:
        if not self.sent:
            await anyio.sleep(self.slow)
        self.sent.append(message)

    async def receive(self) -> Message:
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    def starts(self) -> list[int]:
        return [m["status"] for m in self.sent if m["type"] == "http.response.start"]


async def test_a_quiet_answer_slow_to_send_is_one_json_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline passing while the JSON answer is sent must not start an SSE answer too."""
    monkeypatch.setattr(express, "SSE_COMMIT_SECONDS", 0.05)
    client = Client(slow=0.3)

    async def handler(emit: Emit) -> mcp_types.CallToolResult:
        return RESULT

    with anyio.fail_after(5):
        await _Exchange({"type": "http"}, client.receive, client.send, CALL).run(handler, _finished)
    assert client.starts() == [200]
    assert dict(client.sent[0]["headers"])[b"content-type"] == b"application/json"


async def test_progress_turns_the_answer_into_sse(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client()

    async def handler(emit: Emit) -> mcp_types.CallToolResult:
        await emit({"progressToken": "t", "progress": 1.0})
        return RESULT

    with anyio.fail_after(5):
        await _Exchange({"type": "http"}, client.receive, client.send, CALL).run(handler, _finished)
    assert client.starts() == [200]
    bodies = b"".join(m.get("body", b"") for m in client.sent if m["type"] == "http.response.body")
    assert bodies.count(b"event: message") == 2 and b'"id":"req-1"' in bodies
    assert client.sent[-1]["more_body"] is False
