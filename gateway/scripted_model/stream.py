"""The wire form of a scripted reply: the Messages API's message body and its SSE stream,
with the stream faults a ``Turn`` can ask for (a hang, a clean early end, broken tool-input
JSON, a dropped connection)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio

from gateway.scripted_model.script import Reply, StreamFault

__all__ = ["StreamReset", "message_body", "sse_body", "stream_events"]

DELTAS_PER_BLOCK = 3
ENDING_EVENTS = 2
"""``message_delta`` and ``message_stop``: what a truncated or reset stream never sends."""


class StreamReset(Exception):
    """Raised inside a streaming body to drop the connection mid-response: the server closes it
    without finishing the chunked body, which the client reads as a protocol error."""

    def __init__(self, sent: int) -> None:
        super().__init__(f"scripted connection reset after {sent} events")


class QuietResets(logging.Filter):
    """Keeps scripted resets out of the server's error log: they are the script, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not _contains_reset(error)


def _contains_reset(error: BaseException | None) -> bool:
    if error is None:
        return False
    if isinstance(error, StreamReset):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_contains_reset(inner) for inner in error.exceptions)
    return _contains_reset(error.__cause__ or error.__context__)


def _chunks(text: str, count: int = DELTAS_PER_BLOCK) -> list[str]:
    """Split ``text`` into up to ``count`` non-empty pieces so clients see a real incremental stream."""
    if not text:
        return []
    size = -(-len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), size)]


def message_body(reply: Reply, model: str) -> dict[str, Any]:
    """The complete (non-streaming) Messages API response for ``reply``."""
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": reply.content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": reply.usage,
    }


def _broken(arguments: str) -> str:
    """``arguments`` (a JSON object) with a stray ``@`` where a key must be: a parser fails on it
    even in the SDK's partial mode, as it would on a model's malformed tool input."""
    return arguments[:-1] + (", @}" if arguments != "{}" else "@}")


def _block_events(index: int, block: dict[str, Any], malformed: bool) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"])]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in _chunks(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif kind == "redacted_thinking":  # the API sends it whole in the start event, with no deltas
        start, deltas = dict(block), []
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        arguments = json.dumps(block["input"])
        if malformed:
            arguments = _broken(arguments)
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _chunks(arguments)]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def stream_events(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The SSE event payloads (each carries its ``type``) for streaming ``reply``; with a
    ``malformed_tool_json`` fault the tool inputs are broken, other faults act in ``sse_body``."""
    message = message_body(reply, model)
    malformed = reply.fault is not None and reply.fault.kind == "malformed_tool_json"
    start_usage = {**reply.usage, "output_tokens": min(1, reply.usage["output_tokens"])}
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
        }
    ]
    for index, block in enumerate(reply.content):
        events.extend(_block_events(index, block, malformed))
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": reply.usage,
        }
    )
    events.append({"type": "message_stop"})
    return events


def _cut(events: list[dict[str, Any]], fault: StreamFault) -> int:
    """How many events a truncated or reset stream sends: never the ending ones."""
    unfinished = len(events) - ENDING_EVENTS
    return unfinished if fault.after_events is None else min(fault.after_events, unfinished)


async def sse_body(events: list[dict[str, Any]], fault: StreamFault | None) -> AsyncIterator[str]:
    """The SSE text of ``events``, as ``fault`` leaves it."""
    if fault is not None and fault.kind in ("truncate", "reset"):
        events = events[: _cut(events, fault)]
    hang_at = (fault.after_events or 0) if fault is not None and fault.kind == "hang" else None
    for number, event in enumerate(events):
        if hang_at is not None and number >= hang_at:
            # Starlette cancels this generator when the client disconnects (ASGI < 2.4).
            await anyio.sleep_forever()
        yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
    if hang_at is not None:
        await anyio.sleep_forever()
    if fault is not None and fault.kind == "reset":
        raise StreamReset(len(events))
