"""In-process wake-ups for readers of the session log.

A reader takes the current ``Wake`` for its session *before* checking the log, so an
append that commits between the check and the wait still wakes it. Deleting the session
wakes its readers with ``gone`` set: nothing will follow. Deleted keys are remembered (ids
are never reused), so a reader that starts watching only after the deletion learns it too.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

REMEMBERED_GONE = 4096


class Wake(asyncio.Event):
    gone = False
    """Set when the wake-up means the session was deleted."""


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, Wake] = {}
        self._waiters: dict[str, int] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()

    @contextmanager
    def watch(self, key: str) -> Iterator[Wake]:
        event = self._events.setdefault(key, Wake())
        if key in self._gone:
            event.gone = True
            event.set()
        self._waiters[key] = self._waiters.get(key, 0) + 1
        try:
            yield event
        finally:
            self._waiters[key] -= 1
            if self._waiters[key] == 0:
                del self._waiters[key]
                if self._events.get(key) is event:
                    del self._events[key]

    def notify(self, key: str, gone: bool = False) -> None:
        if gone:
            self._gone[key] = None
            while len(self._gone) > REMEMBERED_GONE:
                self._gone.popitem(last=False)
        event = self._events.pop(key, None)
        if event is not None:
            event.gone = gone
            event.set()
            if key in self._waiters:
                self._events[key] = Wake()
