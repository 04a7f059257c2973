"""Idle sessions with a session-based (2025-11-25) upstream, kept for the express lane.

Opening a session costs two round trips (``initialize``, ``notifications/initialized``)
and closing it a third, which is more than the call itself; the SDK path pays all three
on every call. The express lane instead keeps sessions open between calls, in the
**per-caller** isolation mode: a session belongs to one caller (API key or token subject)
and one set of last-hop credential headers, and only that pair's calls reuse it, one call
at a time. Whatever per-session state the upstream keeps is thus seen only by calls of the
same caller, as if that caller had connected to the upstream itself and kept its session;
two callers never share one.

This module only keeps the books; ``wire`` opens and uses the sessions and the upstream's
closer task ends them. At most ``PER_OWNER`` idle sessions per owner and ``MAX_IDLE`` per
upstream are kept, and one idle for ``IDLE_SECONDS`` is closed.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio

Owner = tuple[str, str]
"""(caller id, digest of the last-hop credential headers)."""
PER_OWNER = 32
MAX_IDLE = 256
IDLE_SECONDS = 60.0


def owner_of(caller_id: str, headers: dict[str, str]) -> Owner:
    canonical = "\n".join(f"{key.lower()}:{value}" for key, value in sorted(headers.items()))
    return caller_id, hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(eq=False)
class UpstreamSession:
    session_id: str | None
    """None for a server that answered ``initialize`` without one (stateless)."""
    protocol_version: str
    owner: Owner
    headers: dict[str, str]
    """The credential headers it was opened with (its DELETE carries them too)."""
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    idle_since: float = 0.0
    in_flight: Any = None
    """The id of the request being answered, for telling the upstream if it is cancelled."""


class UpstreamSessions:
    """Idle sessions by owner, the ones in use, and the ones waiting to be closed.

    Nothing here does I/O: sessions to end (surplus, expired, dropped after a failure,
    replaced) are queued for ``to_close``, which the upstream's closer task empties with a
    DELETE each, so no call waits for another session's DELETE and none is forgotten.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._idle: dict[Owner, list[UpstreamSession]] = {}
        self._in_use: set[UpstreamSession] = set()
        self._closing: list[UpstreamSession] = []
        self._wakeup: anyio.Event | None = None
        self.closed = False

    def take(self, owner: Owner) -> UpstreamSession | None:
        """The owner's most recently used idle session, now in use; None if it has none."""
        idle = self._idle.get(owner)
        if not idle:
            return None
        session = idle.pop()
        if not idle:
            del self._idle[owner]
        self._in_use.add(session)
        return session

    def opened(self, session: UpstreamSession) -> None:
        """A session just opened for a call, now in use."""
        self._in_use.add(session)

    def give_back(self, session: UpstreamSession) -> None:
        """Keep ``session`` for its owner's next call (closing the longest idle beyond the bounds)."""
        if not self._release(session):
            return
        session.idle_since = self._clock()
        idle = self._idle.setdefault(session.owner, [])
        idle.append(session)
        while len(idle) > PER_OWNER:
            self._close(idle.pop(0))
        if self.count() > MAX_IDLE:
            oldest = min(self._all(), key=lambda s: s.idle_since)
            self._forget(oldest)
            self._close(oldest)

    def discard(self, session: UpstreamSession) -> None:
        """A session not to use again (a failure during its call): it will be closed."""
        if self._release(session):
            self._close(session)

    def forget(self, session: UpstreamSession) -> None:
        """A session the upstream no longer knows: nothing to close."""
        self._release(session)

    def expire(self) -> None:
        """Queue for closing the sessions idle for ``IDLE_SECONDS`` or more."""
        cutoff = self._clock() - IDLE_SECONDS
        for session in [session for session in self._all() if session.idle_since <= cutoff]:
            self._forget(session)
            self._close(session)

    def drain(self) -> None:
        """Queue every idle session for closing (the upstream may have been replaced)."""
        for session in list(self._all()):
            self._close(session)
        self._idle.clear()

    def to_close(self) -> list[UpstreamSession]:
        """The sessions queued for closing, now the caller's to close."""
        closing, self._closing = self._closing, []
        return closing

    def close_all(self) -> list[UpstreamSession]:
        """Every session, idle, in use or queued, for a final close; later returns are ignored."""
        self.closed = True
        every = [*self._all(), *self._in_use, *self._closing]
        self._idle.clear()
        self._in_use.clear()
        self._closing = []
        return every

    async def wait_for_closing(self, timeout: float) -> None:
        """Until a session is queued for closing, or ``timeout`` passes."""
        if not self._closing:
            self._wakeup = anyio.Event()
            with anyio.move_on_after(timeout):
                await self._wakeup.wait()
            self._wakeup = None

    def count(self) -> int:
        """Idle sessions kept."""
        return sum(len(sessions) for sessions in self._idle.values())

    def _release(self, session: UpstreamSession) -> bool:
        """Out of use; False once the books are closed (the session was closed with them)."""
        self._in_use.discard(session)
        return not self.closed

    def _close(self, session: UpstreamSession) -> None:
        self._closing.append(session)
        if self._wakeup is not None:
            self._wakeup.set()

    def _all(self) -> Iterator[UpstreamSession]:
        for sessions in self._idle.values():
            yield from sessions

    def _forget(self, session: UpstreamSession) -> None:
        idle = self._idle.get(session.owner, [])
        if session in idle:
            idle.remove(session)
        if not idle:
            self._idle.pop(session.owner, None)
