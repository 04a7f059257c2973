"""``ToolError``, and the boundary that turns whatever else a tool raises into one."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sandbox_server.workspace import WorkspaceError


class ToolError(Exception):
    """A tool failed in a way the model should read and react to; ``str()`` is the message."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def model_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn containment refusals and stray OS errors into ``ToolError`` at the tool boundary."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except WorkspaceError as exc:
            raise ToolError(str(exc)) from exc
        except OSError as exc:
            raise ToolError(f"{fn.__name__} failed: {exc.strerror or exc}") from exc

    return wrapper
