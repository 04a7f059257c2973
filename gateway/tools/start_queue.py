"""The host's queue of sandbox starts, and the back-off after a failed one.

Why a queue: a sandbox start is a fresh Python interpreter importing the MCP server, about two
seconds of CPU. Twenty sessions starting theirs at once on a two-core host shared the CPU so
thinly that every start overran its fixed timeout, and each failed start began again from
scratch on the session's next call. Admitted ``limit`` at a time, first come first served, each
start gets the CPU it needs; its timeout counts from admission, never while it waits, and grows
with the starts it shares the host with (``Slot.load``), so no start fails for having queued.

Why a back-off: a start that failed (a broken flag, credentials that cannot be fetched) would
fail the same way if retried at once; the session's next attempt waits a bounded, jittered,
exponentially growing delay (``Backoff``) instead of taking a place in the queue again.

A waiter that is cancelled, or whose ``patience`` runs out (``StillQueued``), leaves the queue;
a slot handed to a waiter at the moment it was cancelled is passed on to the next one.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio

log = logging.getLogger("tether.sandbox")


def host_cpus() -> int:
    """The CPUs this process may run on (its affinity, which a container's limit narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_concurrency() -> int:
    """Starts run at once by default: one per CPU, and never fewer than two."""
    return max(2, host_cpus())


class StillQueued(Exception):
    """The waiter's patience ran out before a place in the queue came up."""

    def __init__(self, position: int, running: int, waited: float) -> None:
        self.position = position
        self.running = running
        self.waited = waited
        super().__init__(
            f"position {position} in the start queue ({position - 1} waiting ahead of it, "
            f"{running} starting), after waiting {waited:.0f}s"
        )


@dataclass(eq=False)
class _Ticket:
    queued_at: float
    event: anyio.Event = field(default_factory=anyio.Event)
    admitted: bool = False


@dataclass(frozen=True)
class Slot:
    """A place among the running starts."""

    waited: float
    """Seconds spent in the queue before admission."""
    load: float
    """At least 1: how much slower than alone this start may run (the starts expected to share
    the host with it, per CPU). Multiply the start timeout by it."""


class StartQueue:
    """At most ``limit`` starts at once on this host, admitted in arrival order."""

    def __init__(self, limit: int | None = None, cpus: int | None = None) -> None:
        self.limit = max(1, limit if limit is not None else default_concurrency())
        self.cpus = max(1, cpus if cpus is not None else host_cpus())
        self._running = 0
        self._waiting: deque[_Ticket] = deque()

    @property
    def running(self) -> int:
        """Starts admitted and not yet finished."""
        return self._running

    @property
    def waiting(self) -> int:
        """Starts queued for a place (the queue's depth)."""
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self, patience: float | None = None) -> AsyncIterator[Slot]:
        """Wait for a place (at most ``patience`` seconds, else ``StillQueued``) and hold it for
        the body. Cancelled or out of patience, the waiter leaves the queue."""
        ticket = _Ticket(anyio.current_time())
        if self._running < self.limit and not self._waiting:
            self._running += 1
            ticket.admitted = True
        else:
            self._waiting.append(ticket)
            log.info(
                "sandbox start queued at position %d (%d starting, limit %d)",
                len(self._waiting),
                self._running,
                self.limit,
            )
        try:
            if not ticket.admitted:
                with anyio.move_on_after(math.inf if patience is None else patience):
                    await ticket.event.wait()
                if not ticket.admitted:
                    waited = anyio.current_time() - ticket.queued_at
                    raise StillQueued(self._waiting.index(ticket) + 1, self._running, waited)
        except BaseException:
            self._leave(ticket)
            raise
        waited = anyio.current_time() - ticket.queued_at
        expected = min(self.limit, self._running + len(self._waiting))
        if waited > 0.5:
            log.info("sandbox start admitted after %.1fs in the queue (%d waiting)", waited, self.waiting)
        try:
            yield Slot(waited, max(1.0, expected / self.cpus))
        finally:
            self._release()

    def _leave(self, ticket: _Ticket) -> None:
        if ticket.admitted:
            self._release()  # admitted as it gave up: the place goes to the next in line
        else:
            self._waiting.remove(ticket)

    def _release(self) -> None:
        """Hand the place to the first waiter, or free it."""
        if self._waiting:
            ticket = self._waiting.popleft()
            ticket.admitted = True
            ticket.event.set()
        else:
            self._running -= 1


@dataclass(frozen=True)
class Backoff:
    """How long a session waits after ``failures`` failed starts in a row before the next one:
    ``base * 2**(failures-1)``, at most ``cap``, jittered down to no less than half of that."""

    base: float = 1.0
    cap: float = 30.0
    jitter: Callable[[], float] = random.random
    """In [0, 1): where in the upper half of the window the delay falls."""

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        ceiling = min(self.cap, self.base * 2 ** min(failures - 1, 32))
        return ceiling * (0.5 + self.jitter() / 2)
