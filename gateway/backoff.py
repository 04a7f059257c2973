"""Jittered exponential backoff, shared by everything that waits before trying again."""

from __future__ import annotations

import random


class Backoff:
    """Delays doubling from ``first`` up to ``maximum``, each drawn from the upper half of its
    step, so many waiters spread out instead of retrying in lockstep."""

    def __init__(self, first: float, maximum: float) -> None:
        self.first = first
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.maximum, self.first * 2 ** (self.failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0
