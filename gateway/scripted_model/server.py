"""HTTP front for the scripted model: the Anthropic Messages API, served from a ``ScriptBook``.

It is a real server (not a mock transport) so the harness exercises the same SDK,
SSE parsing, retries and timeouts it uses against Claude. Admin endpoints let a test
add scripts at runtime and read back exactly what the model was sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.scripted_model.script import Failure, Reply, Script, ScriptBook, validation_message
from gateway.serving import serve

__all__ = ["create_app", "message_body", "run", "stream_events"]

DELTAS_PER_BLOCK = 3


def _error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the shape the SDK parses into ``APIStatusError.body``."""
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


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


def _block_events(index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        start: dict[str, Any] = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"])]
    elif kind == "thinking":
        start = {"type": "thinking", "thinking": "", "signature": ""}
        deltas = [{"type": "thinking_delta", "thinking": piece} for piece in _chunks(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        arguments = json.dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _chunks(arguments)]
    return [
        {"type": "content_block_start", "index": index, "content_block": start},
        *({"type": "content_block_delta", "index": index, "delta": delta} for delta in deltas),
        {"type": "content_block_stop", "index": index},
    ]


def stream_events(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The SSE event payloads (each carries its ``type``) for streaming ``reply``."""
    message = message_body(reply, model)
    start_usage = {**reply.usage, "output_tokens": min(1, reply.usage["output_tokens"])}
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {**message, "content": [], "stop_reason": None, "usage": start_usage},
        }
    ]
    for index, block in enumerate(reply.content):
        events.extend(_block_events(index, block))
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": reply.usage,
        }
    )
    events.append({"type": "message_stop"})
    return events


async def _sse(events: list[dict[str, Any]], hang_after: int | None) -> AsyncIterator[str]:
    for number, event in enumerate(events):
        if hang_after is not None and number >= hang_after:
            # Starlette cancels this generator when the client disconnects (ASGI < 2.4).
            await anyio.sleep_forever()
        yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
    if hang_after is not None:
        await anyio.sleep_forever()


def _invalid_request(body: Any) -> str | None:
    """Why ``body`` is not a usable Messages request, or ``None`` if it is."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: field required (a non-empty string)"
    if not isinstance(body.get("messages"), list):
        return "messages: field required (a list)"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: field required (a positive integer)"
    return None


def create_app(book: ScriptBook) -> Starlette:
    """A Starlette app serving ``book``; it also records every valid request it receives."""
    received: list[dict[str, Any]] = []

    async def messages(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid_request_error", "request body is not valid JSON")
        problem = _invalid_request(body)
        if problem is not None:
            return _error(400, "invalid_request_error", problem)
        received.append(body)
        outcome = book.respond(body)
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        if isinstance(outcome, Failure):
            if outcome.retry_after is not None:
                headers["retry-after"] = f"{outcome.retry_after:g}"
            return _error(outcome.status, outcome.type, outcome.message, headers)
        if body.get("stream"):
            events = stream_events(outcome, body["model"])
            return StreamingResponse(
                _sse(events, outcome.hang_after_events),
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        return JSONResponse(message_body(outcome, body["model"]), headers=headers)

    async def add_script(request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid_request_error", "script is not valid JSON")
        try:
            script = Script.model_validate(data)
        except ValidationError as exc:
            return _error(400, "invalid_request_error", validation_message(exc))
        index = book.add(script)
        return JSONResponse({"index": index, "match": script.match, "turns": len(script.turns)}, 201)

    async def list_requests(request: Request) -> Response:
        return JSONResponse(received)

    async def clear_requests(request: Request) -> Response:
        received.clear()
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/_scripts", add_script, methods=["POST"]),
            Route("/_requests", list_requests, methods=["GET"]),
            Route("/_requests", clear_requests, methods=["DELETE"]),
        ]
    )


def run(host: str, port: int, script_path: str | None) -> None:
    """Serve the scripted model, preloading the scripts in ``script_path`` if given."""
    try:
        book = ScriptBook.load(script_path) if script_path else ScriptBook()
    except ValidationError as exc:
        raise SystemExit(f"invalid script file {script_path}: {validation_message(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot load script file {script_path}: {exc}") from exc
    serve(create_app(book), host, port)
