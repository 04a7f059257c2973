"""Tell observers about every batch of events this process appends to a session log.

Wrapping the store (rather than hooking the harness) catches every writer in the
process: the harness, the runner's shutdown and interrupt bookkeeping, and the API's
client events. Observers run only after the append committed, so they never see an
event that could still be rolled back; each process observes only its own appends, so
with several replicas every event is observed exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, cast

from gateway.store.base import Body, Lease, Store, StoredEvent

log = logging.getLogger("tether.observability")

EventObserver = Callable[[str, Sequence[StoredEvent]], None]
"""Called with a session id and the events just committed. Must be quick and must not
block (queue work for later): it runs inline, after the append, in the appender's task."""


class ObservedStore:
    """Delegates everything to ``inner``; ``append_events`` also notifies the observers."""

    def __init__(self, inner: Store, observers: Sequence[EventObserver]) -> None:
        self._inner = inner
        self._observers = tuple(observers)

    @property
    def inner(self) -> Store:
        return self._inner

    async def append_events(
        self, session_id: str, events: Sequence[Body], fence: Lease | None = None
    ) -> list[StoredEvent]:
        stored = await self._inner.append_events(session_id, events, fence=fence)
        for observer in self._observers:
            try:
                observer(session_id, stored)
            except Exception:
                # Observability must never fail a write that already committed.
                log.exception("event observer %r failed", observer)
        return stored

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def observe_store(store: Store, *observers: EventObserver) -> Store:
    """``store = observe_store(await open_store(url), metrics.observe_events, webhooks.observe)``."""
    return cast(Store, ObservedStore(store, observers))
