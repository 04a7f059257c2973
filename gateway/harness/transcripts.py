"""Recently used sessions' transcripts, kept in memory and extended with what is new.

A harness step then reads only the events appended since its last look instead of the
whole log. The log stays the only source of truth: a cached transcript is extended with
``read_events(after_seq=its last seq)``, which returns exactly the missing events whoever
appended them (another process included), and is rebuilt from scratch when that read does
not line up (a deleted and re-created session, a log that moved backwards).
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.sessionlog.transcript import Transcript
from gateway.store.base import EventQuery, Store

DEFAULT_SESSIONS = 256


class TranscriptCache:
    """Least-recently-used transcripts by session; one per session id."""

    def __init__(self, sessions: int = DEFAULT_SESSIONS) -> None:
        self.sessions = sessions
        self._cached: OrderedDict[str, Transcript] = OrderedDict()

    async def current(self, store: Store, session_id: str) -> Transcript:
        """The session's transcript up to the newest committed event."""
        cached = self._cached.pop(session_id, None)
        transcript: Transcript | None = None
        if cached is not None:
            newer = await store.read_events(session_id, EventQuery(after_seq=cached.last_seq))
            if not newer or newer[0].seq == cached.last_seq + 1:
                cached.extend(newer)
                transcript = cached
        if transcript is None:
            transcript = Transcript.from_events(await store.read_events(session_id, EventQuery()))
        self._cached[session_id] = transcript
        while len(self._cached) > self.sessions:
            self._cached.popitem(last=False)
        return transcript

    def forget(self, session_id: str) -> None:
        self._cached.pop(session_id, None)
