"""HTTP front for the scripted model: the Anthropic Messages API, served from a ``ScriptBook``.

It is a real server (not a mock transport) so the harness exercises the same SDK,
SSE parsing, retries and timeouts it uses against Claude. Admin endpoints let a test
add scripts at runtime and read back exactly what the model was sent.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.scripted_model.cache import problem as cache_problem
from gateway.scripted_model.gates import Gates
from gateway.scripted_model.script import Failure, Script, ScriptBook, validation_message
from gateway.scripted_model.stream import QuietResets, message_body, sse_body, stream_events
from gateway.scripted_model.thinking import ThinkingLedger
from gateway.serving import serve

__all__ = ["create_app", "run"]


def _error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in the shape the SDK parses into ``APIStatusError.body``."""
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


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
    return cache_problem(body)


def create_app(book: ScriptBook) -> Starlette:
    """A Starlette app serving ``book``; it also records every valid request it receives, and
    every reply it serves (with the request's ``system``, so a test can find its own)."""
    received: list[dict[str, Any]] = []
    served: list[dict[str, Any]] = []
    ledger = ThinkingLedger()
    gates = Gates()

    async def messages(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid_request_error", "request body is not valid JSON")
        problem = _invalid_request(body)
        if problem is not None:
            return _error(400, "invalid_request_error", problem)
        problem = ledger.problem(body)
        if problem is not None:
            return _error(400, "invalid_request_error", problem)
        received.append(body)
        outcome = book.respond(body)
        headers = {"request-id": f"req_{uuid.uuid4().hex[:24]}"}
        if isinstance(outcome, Failure):
            if outcome.retry_after is not None:
                headers["retry-after"] = f"{outcome.retry_after:g}"
            return _error(outcome.status, outcome.type, outcome.message, headers)
        ledger.record(outcome.content)
        served.append({"system": body.get("system"), "content": outcome.content})
        if outcome.hold is not None:
            await gates.pass_through(outcome.hold)
        if body.get("stream"):
            events = stream_events(outcome, body["model"])
            return StreamingResponse(
                sse_body(events, outcome.fault),
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

    async def list_replies(request: Request) -> Response:
        return JSONResponse(served)

    async def clear_requests(request: Request) -> Response:
        received.clear()
        return Response(status_code=204)

    async def gate_arrived(request: Request) -> Response:
        """Waits (up to ``?timeout=`` seconds, default 30) until a request is held at the gate."""
        timeout = float(request.query_params.get("timeout", "30"))
        if await gates.wait_arrived(request.path_params["name"], timeout):
            return Response(status_code=204)
        return _error(408, "timeout_error", "no request arrived at the gate")

    async def gate_open(request: Request) -> Response:
        gates.open(request.path_params["name"])
        return Response(status_code=204)

    return Starlette(
        routes=[
            Route("/_gates/{name}/arrived", gate_arrived, methods=["GET"]),
            Route("/_gates/{name}/open", gate_open, methods=["POST"]),
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/_scripts", add_script, methods=["POST"]),
            Route("/_requests", list_requests, methods=["GET"]),
            Route("/_replies", list_replies, methods=["GET"]),
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
    logging.getLogger("uvicorn.error").addFilter(QuietResets())
    serve(create_app(book), host, port)
