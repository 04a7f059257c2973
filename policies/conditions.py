"""Condition operators: how a rule's ``when`` tests one field of a tool's input.

Each operator validates and prepares its operand once, at load time (so a bad regex
is a load error with a line number, never a surprise mid-session), tests a value at
decision time, and describes itself for ``tether policy check``.

Semantics shared by every operator: a field that is absent or ``null`` is *missing*,
and a condition on a missing field is false, except ``exists: false``. Paths are
compared after normalisation with :mod:`posixpath` (relative paths are taken relative
to ``/workspace``, the model's view of its workspace), so ``/workspace/src/../etc`` is
not under ``/workspace/src``. Symlinks cannot be seen from here; the sandbox confines
them to the workspace.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

WORKSPACE = "/workspace"


@dataclass(frozen=True)
class Operator:
    name: str
    prepare: Callable[[Any], Any]
    """Validate the operand and return its prepared form; raise ``ValueError`` to reject it."""
    test: Callable[[bool, Any, Any], bool]
    """``(present, value, prepared) -> holds``."""
    describe: Callable[[Any], str]
    """The operand (as written) in plain words, after the field name."""


def lookup_field(arguments: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """``(present, value)`` for ``name``: a literal key first, else a dotted path into objects."""
    if name in arguments:
        value = arguments[name]
        return value is not None, value
    current: Any = arguments
    for part in name.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False, None
        current = current[part]
    return current is not None, current


def normalise_path(path: str) -> str:
    """The absolute, ``..``-free spelling of a path as the sandbox would resolve it lexically."""
    if not path.startswith("/"):
        path = f"{WORKSPACE}/{path}"
    normal = posixpath.normpath(path)
    # POSIX keeps a leading "//" distinct; for prefix checks it is just "/".
    return "/" + normal.lstrip("/")


def is_under(path: str, root: str) -> bool:
    """Both arguments normalised; a directory is under itself."""
    return root == "/" or path == root or path.startswith(root + "/")


def _as_text(value: Any) -> str:
    """Non-strings are matched as their JSON text, so a regex still sees list or number inputs."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def _same(value: Any, operand: Any) -> bool:
    """Equality that keeps ``true`` and ``1`` apart, as JSON does."""
    if isinstance(value, bool) or isinstance(operand, bool):
        return type(value) is type(operand) and value == operand
    return bool(value == operand)


def _regex(operand: Any) -> re.Pattern[str]:
    if not isinstance(operand, str):
        raise ValueError("expects a regular expression string")
    try:
        return re.compile(operand)
    except re.error as exc:
        raise ValueError(f"bad regular expression {operand!r}: {exc}") from None


def _path(operand: Any) -> str:
    if not isinstance(operand, str) or not operand:
        raise ValueError("expects a non-empty path string")
    return normalise_path(operand)


def _scalar(operand: Any) -> Any:
    if isinstance(operand, (dict, list)):
        raise ValueError("expects a single value (use 'in' for a list of values)")
    return operand


def _choices(operand: Any) -> list[Any]:
    if not isinstance(operand, list) or not operand:
        raise ValueError("expects a non-empty list of values")
    return operand


def _flag(operand: Any) -> bool:
    if not isinstance(operand, bool):
        raise ValueError("expects true or false")
    return operand


def _quoted(operand: Any) -> str:
    return f"'{operand}'"


def _json(operand: Any) -> str:
    return json.dumps(operand, ensure_ascii=False, default=str)


OPERATORS: dict[str, Operator] = {
    op.name: op
    for op in (
        Operator(
            "matches",
            _regex,
            lambda present, value, rx: present and rx.search(_as_text(value)) is not None,
            lambda operand: f"matches {_quoted(operand)}",
        ),
        Operator(
            "not_matches",
            _regex,
            lambda present, value, rx: present and rx.search(_as_text(value)) is None,
            lambda operand: f"does not match {_quoted(operand)}",
        ),
        Operator(
            "equals",
            _scalar,
            lambda present, value, expected: present and _same(value, expected),
            lambda operand: f"equals {_json(operand)}",
        ),
        Operator(
            "in",
            _choices,
            lambda present, value, choices: present and any(_same(value, c) for c in choices),
            lambda operand: "is one of " + ", ".join(_json(c) for c in operand),
        ),
        Operator(
            "under",
            _path,
            lambda present, value, root: (
                present and isinstance(value, str) and is_under(normalise_path(value), root)
            ),
            lambda operand: f"is under {normalise_path(operand)}",
        ),
        Operator(
            "not_under",
            _path,
            lambda present, value, root: (
                present and isinstance(value, str) and not is_under(normalise_path(value), root)
            ),
            lambda operand: f"is not under {normalise_path(operand)}",
        ),
        Operator(
            "exists",
            _flag,
            lambda present, value, wanted: present == wanted,
            lambda operand: "is given" if operand else "is not given",
        ),
    )
}
