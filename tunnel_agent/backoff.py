"""Reconnect delays: full-jitter exponential backoff that resets after a stable connection.

Full jitter (a uniform delay between 0 and the exponential cap) spreads a fleet of agents
that all lost the gateway at once, so a restarted gateway is not hit by a synchronised
wave. A connection that stayed up for ``stable_after`` seconds proves the path works, so
the next failure starts again from the smallest delay instead of the largest.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 30.0
    uniform: Callable[[float, float], float] = field(default=random.uniform, repr=False)
    attempt: int = 0

    def next_delay(self, connected_for: float | None = None) -> float:
        """The wait before the next dial; ``connected_for`` is how long the last link lived."""
        if connected_for is not None and connected_for >= self.stable_after:
            self.attempt = 0
        ceiling = min(self.cap, self.base * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self.uniform(0.0, ceiling)
