"""In-process wake-ups for readers of the session log.

A reader takes the current ``asyncio.Event`` for its session *before* checking the
log, so an append that commits between the check and the wait still wakes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}

    @contextmanager
    def watch(self, key: str) -> Iterator[asyncio.Event]:
        event = self._events.setdefault(key, asyncio.Event())
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            yield event
        finally:
            self._waiters[key] -= 1
            if self._waiters[key] == 0:
                del self._waiters[key]
                if self._events.get(key) is event:
                    del self._events[key]

    def notify(self, key: str) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()
            if key in self._waiters:
                self._events[key] = asyncio.Event()
