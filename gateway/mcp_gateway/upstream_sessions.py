"""Idle sessions with a session-based (2025-11-25) upstream, kept for the express lane.

Opening a session costs two round trips (``initialize``, ``notifications/initialized``)
and closing it a third, which is more than the call itself; the SDK path pays all three
on every call. The express lane instead keeps sessions open between calls, in the
**per-caller** isolation mode: a session belongs to one caller (API key or token subject)
and one set of last-hop credential headers, and only that pair's calls reuse it, one call
at a time. Whatever per-session state the upstream keeps is thus seen only by calls of the
same caller, as if that caller had connected to the upstream itself and kept its session;
two callers never share one.

This module only keeps the books; ``wire`` opens, uses and closes the sessions. At most
``PER_OWNER`` idle sessions per owner and ``MAX_IDLE`` per upstream are kept, and one idle
for ``IDLE_SECONDS`` is handed back for closing.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Owner = tuple[str, str]
"""(caller id, digest of the last-hop credential headers)."""
PER_OWNER = 4
MAX_IDLE = 64
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
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._idle: dict[Owner, list[UpstreamSession]] = {}

    def take(self, owner: Owner) -> UpstreamSession | None:
        """The owner's most recently used idle session, now in use; None if it has none."""
        idle = self._idle.get(owner)
        if not idle:
            return None
        session = idle.pop()
        if not idle:
            del self._idle[owner]
        return session

    def give_back(self, session: UpstreamSession) -> list[UpstreamSession]:
        """Keep ``session`` for its owner's next call; returns the sessions to close instead."""
        session.idle_since = self._clock()
        idle = self._idle.setdefault(session.owner, [])
        idle.append(session)
        surplus = idle[:-PER_OWNER] if len(idle) > PER_OWNER else []
        del idle[: len(surplus)]
        if sum(len(sessions) for sessions in self._idle.values()) > MAX_IDLE:
            oldest = min(self._all(), key=lambda s: s.idle_since)
            surplus.append(oldest)
            self._forget(oldest)
        return surplus

    def expired(self) -> list[UpstreamSession]:
        """Sessions idle for ``IDLE_SECONDS`` or more, no longer kept."""
        cutoff = self._clock() - IDLE_SECONDS
        stale = [session for session in self._all() if session.idle_since <= cutoff]
        for session in stale:
            self._forget(session)
        return stale

    def drain(self) -> list[UpstreamSession]:
        """Every idle session, no longer kept (the upstream was replaced, or the gateway stops)."""
        every = list(self._all())
        self._idle.clear()
        return every

    def count(self) -> int:
        return sum(len(sessions) for sessions in self._idle.values())

    def _all(self) -> Iterator[UpstreamSession]:
        for sessions in self._idle.values():
            yield from sessions

    def _forget(self, session: UpstreamSession) -> None:
        idle = self._idle.get(session.owner, [])
        if session in idle:
            idle.remove(session)
        if not idle:
            self._idle.pop(session.owner, None)
