"""A store that waits out outages instead of failing: for the harness and background loops.

The API must answer a client at once (503 while the database is down), but a session's
run, a lease renewal or a webhook delivery has nobody to answer: it should pause while
the database is locked, full or restarting, and carry on when it is back, with nothing
lost and nothing written twice. Every call here retries ``StoreUnavailable`` with
bounded, jittered backoff until it succeeds or its task is cancelled.

Writes whose commit may have happened although its answer was lost (a connection cut
during COMMIT) are retried only after checking by id: events and resources carry
unique ids, so a retry first looks for what the failed attempt may have stored.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import anyio

from gateway.backoff import Backoff
from gateway.store.base import Body, EventQuery, Lease, Store, StoredEvent, StoreUnavailable

log = logging.getLogger("tether.store")

T = TypeVar("T")

_IMPATIENT = frozenset({"close", "check"})


async def patiently(what: str, attempt: Callable[[], Awaitable[T]], backoff: Backoff | None = None) -> T:
    """``await attempt()`` until it does not raise ``StoreUnavailable``."""
    backoff = backoff or Backoff(first=0.05, maximum=2.0)
    while True:
        try:
            result = await attempt()
        except StoreUnavailable as exc:
            if backoff.failures == 0:
                log.warning("%s: the store is unavailable, waiting for it (%s)", what, exc)
            await anyio.sleep(backoff.next_delay())
            continue
        if backoff.failures:
            log.info("%s: the store is back after %d attempts", what, backoff.failures + 1)
        return result


class PatientStore:
    """Delegates to ``inner``; every coroutine method waits out ``StoreUnavailable``."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    @property
    def inner(self) -> Store:
        return self._inner

    async def append_events(
        self, session_id: str, events: Sequence[Body], fence: Lease | None = None
    ) -> list[StoredEvent]:
        tried = False

        async def attempt() -> list[StoredEvent]:
            nonlocal tried
            if tried and events:
                stored = await self._already_stored(session_id, events)
                if stored is not None:
                    return stored
            tried = True
            return await self._inner.append_events(session_id, events, fence=fence)

        return await patiently(f"append to {session_id}", attempt)

    async def _already_stored(self, session_id: str, events: Sequence[Body]) -> list[StoredEvent] | None:
        """The events of a batch whose commit went through although its answer was lost."""
        first = await self._inner.event_seq(session_id, events[0]["id"])
        if first is None:
            return None
        query = EventQuery(after_seq=first - 1, limit=len(events))
        return await self._inner.read_events(session_id, query)

    async def insert(self, kind: str, body: Body) -> None:
        tried = False

        async def attempt() -> None:
            nonlocal tried
            if tried and await self._inner.get(kind, body["id"]) is not None:
                return
            tried = True
            await self._inner.insert(kind, body)

        await patiently(f"insert {body['id']}", attempt)

    async def insert_many(self, kind: str, bodies: Sequence[Body]) -> None:
        tried = False

        async def attempt() -> None:
            nonlocal tried
            # All or none: after a lost answer, the first record tells whether the commit went through.
            if tried and bodies and await self._inner.get(kind, bodies[0]["id"]) is not None:
                return
            tried = True
            await self._inner.insert_many(kind, bodies)

        await patiently(f"insert {len(bodies)} {kind} records", attempt)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._inner, name)
        if name in _IMPATIENT or not callable(target):
            return target

        @functools.wraps(target)
        async def call(*args: Any, **kwargs: Any) -> Any:
            return await patiently(name, lambda: target(*args, **kwargs))

        return call


def patient(store: Store) -> Store:
    return cast(Store, PatientStore(store))
