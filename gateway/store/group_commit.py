"""Group commit: appends from many sessions share one commit, so one disk flush (SQLite's
fsync, PostgreSQL's WAL flush) serves them all.

An append joins a queue; one drain task per event loop takes what is queued as a batch and
hands it to the backend's ``commit``, which answers every append of the batch (or puts one
back for the next batch, ``retry``). Nobody waits on a timer: a lone append is committed at
once, and appends that arrive while a batch is on disk form the next batch, so batches grow
exactly as fast as the disk falls behind.

Each caller returns only once its own append is committed, or with its own error.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio

MAX_BATCH = 256
"""Appends per commit at most, so one batch's transaction stays short."""


@dataclass(eq=False)
class Pending:
    """One caller's append, waiting for its batch."""

    session_id: str
    work: Any
    done: asyncio.Future[Any]
    attempts: int = 0
    queued: bool = True
    """In the queue (not in a batch being committed)."""

    def succeed(self, value: Any) -> None:
        if not self.done.done():
            self.done.set_result(value)

    def fail(self, error: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(error)


Commit = Callable[[list[Pending], "GroupCommit"], Awaitable[None]]


@dataclass
class _Queue:
    waiting: deque[Pending] = field(default_factory=deque)
    drain: asyncio.Task[None] | None = None


class GroupCommit:
    """Batches appends for ``commit``; ``one_per_session`` keeps a session's appends in
    separate batches (for backends that write each session's chain in one statement)."""

    def __init__(self, commit: Commit, *, max_batch: int = MAX_BATCH, one_per_session: bool = False) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._one_per_session = one_per_session
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )
        self.commits = 0
        """Batches handed to ``commit`` so far (each one commit holding one or more appends)."""

    async def submit(self, session_id: str, work: Any) -> Any:
        """The committed result of ``work``, or its error.

        Like a write on a worker thread, a caller cancelled once its append is queued still
        waits for the append's outcome (it may be committed), then is cancelled."""
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(loop, _Queue())
        pending = Pending(session_id, work, loop.create_future())
        queue.waiting.append(pending)
        if queue.drain is None:
            queue.drain = loop.create_task(self._drain(queue))
        with anyio.CancelScope(shield=True):
            await asyncio.wait([pending.done])
        await anyio.lowlevel.checkpoint_if_cancelled()
        return pending.done.result()

    def retry(self, pending: Pending) -> None:
        """Put ``pending`` back at the head of its queue, for the next batch."""
        pending.attempts += 1
        pending.queued = True
        queue = self._queues.get(pending.done.get_loop())
        if queue is not None:
            queue.waiting.appendleft(pending)

    def _take(self, queue: _Queue) -> list[Pending]:
        batch: list[Pending] = []
        later: list[Pending] = []
        sessions: set[str] = set()
        while queue.waiting and len(batch) < self._max_batch:
            pending = queue.waiting.popleft()
            if self._one_per_session and pending.session_id in sessions:
                later.append(pending)
                continue
            sessions.add(pending.session_id)
            pending.queued = False
            batch.append(pending)
        queue.waiting.extendleft(reversed(later))
        return batch

    async def _drain(self, queue: _Queue) -> None:
        batch: list[Pending] = []
        try:
            while queue.waiting:
                batch = self._take(queue)
                self.commits += 1
                try:
                    await self._commit(batch, self)
                except Exception as exc:
                    for pending in batch:
                        pending.fail(exc)
                for pending in batch:
                    if not pending.done.done() and not pending.queued:
                        pending.fail(RuntimeError("the store's commit left this append unanswered"))
                batch = []
        finally:
            queue.drain = None
            stopped = RuntimeError("the store's writer stopped before this append was committed")
            for pending in (*batch, *queue.waiting):
                pending.fail(stopped)
            queue.waiting.clear()
