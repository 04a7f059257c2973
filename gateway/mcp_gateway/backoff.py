"""Full-jitter exponential backoff for reconnects and restarts.

A process or link that stayed up for ``stable_after`` seconds is considered healthy
again, so its next failure starts from the initial delay instead of the last long one.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable


class Backoff:
    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 30.0,
        stable_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.stable_after = stable_after
        self._clock = clock
        self._attempt = 0
        self._started: float | None = None

    def started(self) -> None:
        """The thing came up; remember when, to judge its stability when it goes down."""
        self._started = self._clock()

    def next_delay(self) -> float:
        """The wait before the next attempt; resets after a stable run."""
        if self._started is not None and self._clock() - self._started >= self.stable_after:
            self._attempt = 0
        self._started = None
        ceiling = min(self.maximum, self.initial * (2**self._attempt))
        self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)
