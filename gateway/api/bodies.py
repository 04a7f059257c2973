"""Reading request bodies: size limit, JSON, and validation errors that name the field."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from gateway.errors import InvalidRequest, RequestTooLarge

M = TypeVar("M", bound=BaseModel)

DEFAULT_MAX_BODY = 8 * 1024 * 1024


class BodyInterrupted(ClientDisconnect):
    """The client went away before sending the whole body; ``received`` bytes had arrived."""

    def __init__(self, received: int) -> None:
        super().__init__(f"client disconnected after {received} bytes of the body")
        self.received = received


async def read_json(request: Request, max_bytes: int = DEFAULT_MAX_BODY) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLarge(f"request body exceeds {max_bytes} bytes")
    chunks = bytearray()
    try:
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > max_bytes:
                raise RequestTooLarge(f"request body exceeds {max_bytes} bytes")
    except ClientDisconnect:
        raise BodyInterrupted(len(chunks)) from None
    if not chunks.strip():
        return {}
    try:
        data = json.loads(chunks, parse_constant=_reject_constant)
        # Lone surrogates parse but cannot be stored or returned as UTF-8, and U+0000 cannot be
        # stored by PostgreSQL: refuse both here, before anything is written.
        json.dumps(data, ensure_ascii=False).encode()
        nul = _nul_at(data)
        if nul is not None:
            raise InvalidRequest(f"{nul} may not contain U+0000")
    except (UnicodeError, json.JSONDecodeError, ValueError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    return data


def _nul_at(value: Any, location: str = "") -> str | None:
    """``field: 'string'`` for the first string in the body holding U+0000, if any."""
    if isinstance(value, str):
        return f"{location or 'body'}: {value[:80]!r}" if "\x00" in value else None
    if isinstance(value, dict):
        pairs: list[tuple[Any, Any]] = list(value.items())
    elif isinstance(value, list):
        pairs = list(enumerate(value))
    else:
        return None
    for key, item in pairs:
        inner = f"{location}.{key}" if location else str(key)
        found = _nul_at(key, f"{location or 'body'} (a key)") if isinstance(key, str) else None
        found = found or _nul_at(item, inner)
        if found is not None:
            return found
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def describe(exc: ValidationError, data: Any) -> str:
    """``tools.0.name: must match ...`` for each problem, naming the path in the request body."""
    problems = []
    for error in exc.errors(include_url=False)[:5]:
        location = ".".join(str(part) for part in _body_path(error["loc"], data))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        elif error["type"] == "missing":
            message = "field required"
        elif error["type"] == "value_error":
            message = str(error.get("ctx", {}).get("error") or message.removeprefix("Value error, "))
        problems.append(f"{location}: {message}" if location else message)
    return "; ".join(problems)


def _body_path(loc: tuple[int | str, ...], data: Any) -> list[int | str]:
    """Keep the parts of pydantic's location that name something in the request body.

    Union branches add tags (``custom``, ``cloud``, ``str``, ``function-after[...]``) that the
    client never wrote: a part absent from the body is such a tag unless it is the last part,
    where it names a missing or unknown field.
    """
    path: list[int | str] = []
    current = data
    for index, part in enumerate(loc):
        if isinstance(current, dict) and part in current:
            current = current[part]
            path.append(part)
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current):
            current = current[part]
            path.append(part)
        elif index == len(loc) - 1 and isinstance(current, dict) and not _is_type_tag(str(part)):
            path.append(part)
    return path


def _is_type_tag(part: str) -> bool:
    return "[" in part or part.startswith("function-") or part[:1].isupper() or part in _BUILTIN_TAGS


_BUILTIN_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def validate(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc, data)) from None


async def parse(request: Request, model: type[M], max_bytes: int = DEFAULT_MAX_BODY) -> M:
    return validate(model, await read_json(request, max_bytes))
