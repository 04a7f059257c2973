"""Per-caller token buckets: ``rate`` tokens per second refill up to ``burst``.

One bucket per (caller, virtual server). Buckets live in this process only: with several
gateway replicas each enforces the limit separately, so the effective limit is at most
``replicas x rate`` (documented; a shared limiter would need the database on every call).
Idle full buckets are dropped so the table stays bounded by the active callers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_BUCKETS = 10_000


@dataclass
class Bucket:
    tokens: float
    updated: float
    rate: float
    burst: int

    def refill(self, now: float) -> float:
        return min(float(self.burst), self.tokens + (now - self.updated) * self.rate)


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def take(self, key: tuple[str, str], rate: float, burst: int) -> float | None:
        """Spend one token; None when allowed, else the seconds until a token is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now)
            bucket = self._buckets[key] = Bucket(float(burst), now, rate, burst)
        bucket.rate, bucket.burst = rate, burst
        bucket.tokens = bucket.refill(now)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate if rate > 0 else float("inf")

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely: they behave exactly like new ones."""
        for key, bucket in list(self._buckets.items()):
            if bucket.refill(now) >= bucket.burst:
                del self._buckets[key]
