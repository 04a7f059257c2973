"""Commit times for the session log: ``processed_at`` strictly increasing with ``seq``.

An event's time is assigned when it is committed, under the session's append order, not when
its body was built: two writers (the harness and a client) build events concurrently, so
build times can disagree with the order the log gives them, and a reader that filters by
time (``created_at_gt``) would then miss events. Clocks of different gateway processes may
also differ slightly; each time is at least one microsecond after the previous event's.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway import ids

TICK = timedelta(microseconds=1)


def commit_times(previous: str | None, count: int) -> list[str]:
    """``count`` timestamps, each later than the one before and than ``previous``."""
    moment = ids.now()
    if previous is not None:
        moment = max(moment, datetime.fromisoformat(previous) + TICK)
    return [ids.timestamp(moment + TICK * offset) for offset in range(count)]
