"""A circuit breaker per upstream, so a dead server fails calls fast instead of piling them up.

Closed: calls flow; ``failure_threshold`` consecutive failures open it. Open: calls are
refused at once (the caller turns that into a readable tool error) until ``reset_after``
seconds pass. Half-open: exactly one call is let through as a probe; its success closes
the breaker, its failure opens it again for another cool-down. A probe that ends neither
way (the caller was cancelled) frees the slot for the next probe.

Only *reachability* failures count (connection refused or dropped, timeouts): an upstream
that answers with a protocol error or an ``is_error`` result is alive.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["closed", "open", "half_open"]


class CircuitOpen(Exception):
    """Refused without trying; ``retry_in`` seconds until the next probe may run."""

    def __init__(self, retry_in: float, last_error: str | None) -> None:
        super().__init__(f"circuit open after repeated failures; next try in {retry_in:.1f}s")
        self.retry_in = retry_in
        self.last_error = last_error


@dataclass
class Attempt:
    """Handed to the guarded block; it reports how the call went."""

    outcome: Literal["success", "failure"] | None = None
    error: str | None = None

    def succeeded(self) -> None:
        self.outcome = "success"

    def failed(self, error: str) -> None:
        self.outcome = "failure"
        self.error = error


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.last_error: str | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if self._clock() - self._opened_at >= self.reset_after:
            return "half_open"
        return "open"

    @contextmanager
    def guard(self) -> Iterator[Attempt]:
        """Admit one call (or raise ``CircuitOpen``) and record what the block reports."""
        probe = self._admit()
        attempt = Attempt()
        try:
            yield attempt
        finally:
            if attempt.outcome == "success":
                self.record_success()
            elif attempt.outcome == "failure":
                self.record_failure(attempt.error or "failed")
            if probe:
                self._probing = False

    def _admit(self) -> bool:
        state = self.state
        if state == "closed":
            return False
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        assert self._opened_at is not None
        retry_in = max(self._opened_at + self.reset_after - self._clock(), 0.0)
        raise CircuitOpen(retry_in, self.last_error)

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self, error: str) -> None:
        self.last_error = error
        self._failures += 1
        if self._opened_at is not None or self._failures >= self.failure_threshold:
            self._opened_at = self._clock()

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "consecutive_failures": self._failures,
            "last_error": self.last_error,
        }
