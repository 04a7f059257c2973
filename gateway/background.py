"""Background loops that outlive their own failures.

The gateway's loops (session pickup, sandbox reaping, webhook delivery) run in the
app's lifespan task group. An exception escaping one would cancel the group, close the
store and leave uvicorn serving 500s: a zombie. ``supervised`` logs the failure and
starts the loop again after a backoff, so a fault costs a pause, never the process.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from gateway.backoff import Backoff

log = logging.getLogger("tether")

HEALTHY_SECONDS = 60.0
"""A loop that ran this long before failing starts over with the shortest delay."""


async def supervised(name: str, loop: Callable[[], Awaitable[None]], backoff: Backoff | None = None) -> None:
    """Run ``loop`` until it returns; restart it after every exception."""
    backoff = backoff or Backoff(first=0.5, maximum=30.0)
    while True:
        started = anyio.current_time()
        try:
            await loop()
            return
        except Exception:
            if anyio.current_time() - started > HEALTHY_SECONDS:
                backoff.reset()
            delay = backoff.next_delay()
            log.exception("%s failed; restarting it in %.1fs", name, delay)
        await anyio.sleep(delay)
