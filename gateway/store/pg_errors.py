"""Which PostgreSQL failures mean "the database cannot serve right now".

A restart, a failover, a full disk or a network cut surfaces through asyncpg as one
of a dozen exception types, from the socket, the protocol or the server. The store
turns all of them into ``StoreUnavailable`` so callers handle one thing; real errors
(a constraint, a bug in a query) pass through unchanged. asyncpg's pool replaces dead
connections on its own, so once the server answers again the next call simply works.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from gateway.store.base import StoreUnavailable

C = TypeVar("C", bound=type)

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: the connection failed or was lost
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting up, crash
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: disk full, too many connections
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby during failover
    # The client protocol left in a bad state by a connection lost mid-operation; the pool
    # discards such a connection when it is released.
    asyncpg.exceptions.InternalClientError,
)
_CLOSED_CONNECTION = ("connection is closed", "connection was closed")


def unavailable(exc: BaseException) -> StoreUnavailable | None:
    """The ``StoreUnavailable`` an asyncpg error stands for, or None when it is a real error."""
    transient = isinstance(exc, _TRANSIENT) or (
        isinstance(exc, asyncpg.InterfaceError) and any(s in str(exc) for s in _CLOSED_CONNECTION)
    )
    if not transient:
        return None
    return StoreUnavailable(f"PostgreSQL cannot serve: {type(exc).__name__}: {exc}".rstrip(": "))


def translate_errors(cls: C) -> C:
    """Wrap every public coroutine method of ``cls`` so transient failures raise ``StoreUnavailable``."""
    for name, method in list(vars(cls).items()):
        if name.startswith("_") or name == "close" or not inspect.iscoroutinefunction(method):
            continue
        setattr(cls, name, _translating(method))
    return cls


def _translating(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except StoreUnavailable:
            raise
        except Exception as exc:
            translated = unavailable(exc)
            if translated is None:
                raise
            raise translated from exc

    return call
