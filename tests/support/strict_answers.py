"""A response hook that holds every answer of one API family to the SDK's own types, strictly.

The SDK's models accept unknown fields (and construct leniently), so parsing alone would let a
misspelt or invented field through. Here a success must pass the model's full pydantic
validation *and* carry no field, at any depth, that the model (or the union variant its ``type``
names) does not declare; an error must be shaped exactly like the API's. Generalises
``tests.support.skills.StrictAnswers`` to unions, lists and optional nested models.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import anthropic
import httpx2
from anthropic.types.shared.error_type import ErrorType
from pydantic import BaseModel, TypeAdapter

Expected = Callable[[str, list[str]], tuple[Any, bool]]
"""``(method, path parts after /v1/)`` to the SDK type of the answer and whether it is a page."""
ERROR_TYPES = frozenset(get_args(ErrorType)) | {"request_too_large"}
"""The SDK's error types, and the API's documented one for a 413 the SDK does not list."""


def _variant_type(model: type[BaseModel]) -> object:
    field = model.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    return get_args(field.annotation)[0]


def _members(annotation: Any) -> list[Any]:
    """A union's members, nested unions and ``Annotated`` wrappers flattened."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def unknown_fields(annotation: Any, raw: Any, where: str = "$") -> list[str]:
    """Where ``raw`` holds something ``annotation`` does not declare (empty when nothing)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return unknown_fields(get_args(annotation)[0], raw, where)
    if origin in (Union, types.UnionType):
        if raw is None:
            return []
        models = [a for a in _members(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not models or not isinstance(raw, dict):
            return []
        chosen = [m for m in models if _variant_type(m) == raw.get("type")]
        if len(models) > 1 and not chosen:
            return [f"{where}: no variant has type {raw.get('type')!r}"]
        return unknown_fields((chosen or models)[0], raw, where)
    if origin is list and isinstance(raw, list):
        return [
            p
            for i, item in enumerate(raw)
            for p in unknown_fields(get_args(annotation)[0], item, f"{where}[{i}]")
        ]
    if origin is dict and isinstance(raw, dict):
        inner = get_args(annotation)[1]
        return [p for key, item in raw.items() for p in unknown_fields(inner, item, f"{where}.{key}")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(raw, dict):
            return [f"{where}: not an object"]
        problems = [
            f"{where}.{key}: not in {annotation.__name__}"
            for key in raw
            if key not in annotation.model_fields
        ]
        for name, field in annotation.model_fields.items():
            if name in raw:
                problems += unknown_fields(field.annotation, raw[name], f"{where}.{name}")
        return problems
    return []


class StrictAnswers:
    """Checks every answer from ``/v1/<family>``; ``error_extras`` names further fields an error
    of a given type may carry (e.g. ``conflicting_memory_id``)."""

    def __init__(
        self, family: str, expected: Expected, error_extras: dict[str, set[str]] | None = None
    ) -> None:
        self.family = family
        self.expected = expected
        self.error_extras = error_extras or {}
        self.checked = 0
        self.problems: list[str] = []

    @classmethod
    @contextmanager
    def checking(
        cls, family: str, expected: Expected, error_extras: dict[str, set[str]] | None = None
    ) -> Iterator[StrictAnswers]:
        """Fails at the end if an answer was malformed, or if none was checked at all."""
        checker = cls(family, expected, error_extras)
        yield checker
        assert not checker.problems, checker.problems
        assert checker.checked, f"no answer from /v1/{family} was checked"

    def __call__(self, response: httpx2.Response) -> None:
        parts = response.request.url.path.strip("/").split("/")[1:]
        if parts[:1] != [self.family]:
            return
        response.read()
        try:
            raw = response.json()
            if response.is_error:
                self._check_error(raw)
            else:
                annotation, paged = self.expected(response.request.method, parts)
                if paged:
                    assert set(raw) == {"data", "next_page"}, raw
                for item in raw["data"] if paged else [raw]:
                    assert not unknown_fields(annotation, item), unknown_fields(annotation, item)
                    TypeAdapter(annotation).validate_python(item)
            self.checked += 1
        except Exception as exc:
            self.problems.append(f"{response.request.method} {response.request.url.path}: {exc!r}")

    def _check_error(self, raw: Any) -> None:
        assert set(raw) == {"type", "error"} and raw["type"] == "error", raw
        error = raw["error"]
        assert error["type"] in ERROR_TYPES, error
        allowed = {"type", "message"} | self.error_extras.get(error["type"], set())
        assert {"type", "message"} <= set(error) <= allowed, error
        assert isinstance(error["message"], str) and error["message"], error


def sdk(url: str, key: str, answers: StrictAnswers) -> anthropic.Anthropic:
    """An SDK client whose every answer goes through ``answers``."""
    http = httpx2.Client(event_hooks={"response": [answers]}, timeout=60)
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, http_client=http)
