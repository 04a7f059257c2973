"""Reading request bodies: size limit, JSON, and validation errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from gateway.errors import InvalidRequest, RequestTooLarge

M = TypeVar("M", bound=BaseModel)

DEFAULT_MAX_BODY = 8 * 1024 * 1024


async def read_json(request: Request, max_bytes: int = DEFAULT_MAX_BODY) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge(f"request body exceeds {max_bytes} bytes")
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > max_bytes:
            raise RequestTooLarge(f"request body exceeds {max_bytes} bytes")
    if not chunks.strip():
        return {}
    try:
        return json.loads(chunks)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None


def describe(exc: ValidationError) -> str:
    """``tools.0.type: Input should be 'custom'`` for each problem, most specific first."""
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        location = ".".join(str(part) for part in error["loc"] if not _is_union_tag(part))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "field required"
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def _is_union_tag(part: int | str) -> bool:
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


async def parse(request: Request, model: type[M], max_bytes: int = DEFAULT_MAX_BODY) -> M:
    return validate(model, await read_json(request, max_bytes))
