"""Group commit: appends from many sessions share one commit, so one disk flush (SQLite's
fsync, PostgreSQL's WAL flush) serves them all.

An append joins a queue; one drain task per event loop takes what is queued as a batch and
hands it to the backend's ``commit``, which answers every append of the batch (``succeed`` /
``Pending.fail``), puts one back for a later batch (``retry``) or finishes one on its own
(``aside``). Nobody waits on a timer: a lone append is committed at once, and appends that
arrive while a batch is on disk form the next batch, so batches grow exactly as fast as the
disk falls behind.

Each caller returns only once its own append is committed, or with its own error. A caller
cancelled while its append is still queued takes it out (nothing was written); once the
append is in a batch, the caller waits for its outcome, then is cancelled. Readers are woken
(``committed``) by the commit itself, so a committed append wakes them even when its caller
was cancelled meanwhile.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
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
    """Not in a batch being committed: waiting in the queue or for a retry."""
    aside: asyncio.Task[None] | None = None
    """The task of its own finishing it, if any (``GroupCommit.aside``)."""
    abandoned: bool = False
    """Its caller was cancelled while it was in a batch: if that batch does not write it, it
    is dropped instead of being retried or finished aside."""

    @property
    def in_batch(self) -> bool:
        """In the batch being committed, which must answer it."""
        return not self.queued and self.aside is None

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
    separate batches (for backends that write each session's chain in one statement);
    ``committed`` is told each session whose append committed."""

    def __init__(
        self,
        commit: Commit,
        committed: Callable[[str], None],
        *,
        max_batch: int = MAX_BATCH,
        one_per_session: bool = False,
    ) -> None:
        self._commit = commit
        self._committed = committed
        self._max_batch = max_batch
        self._one_per_session = one_per_session
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue] = (
            weakref.WeakKeyDictionary()
        )
        self._aside: set[asyncio.Task[None]] = set()
        self.commits = 0
        """Batches handed to ``commit`` so far (each one commit holding one or more appends)."""

    async def submit(self, session_id: str, work: Any) -> Any:
        """The committed result of ``work``, or its error."""
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(loop, _Queue())
        pending = Pending(session_id, work, loop.create_future())
        queue.waiting.append(pending)
        self._kick(queue)
        try:
            await asyncio.wait([pending.done])
        except BaseException:
            if not pending.done.done():
                if pending.queued and pending.aside is None:
                    if pending in queue.waiting:
                        queue.waiting.remove(pending)
                    pending.done.cancel()  # never written; a scheduled retry will see it is done
                else:
                    pending.abandoned = True
                    if pending.aside is not None:
                        pending.aside.cancel()  # its own transaction: rolled back unless committing
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait([pending.done])
            raise
        return pending.done.result()

    def succeed(self, pending: Pending, value: Any) -> None:
        """``pending`` is committed with ``value``: answer its caller and wake its readers."""
        if not pending.done.done():
            pending.done.set_result(value)
        self._committed(pending.session_id)

    def retry(self, pending: Pending, delay: float = 0.0) -> None:
        """Put ``pending`` back in its queue for a later batch, after ``delay`` seconds (nothing
        of it was written); an abandoned one is dropped instead."""
        if pending.abandoned:
            pending.done.cancel()
            return
        pending.attempts += 1
        pending.queued = True
        loop = pending.done.get_loop()
        queue = self._queues.get(loop)
        if queue is None:
            pending.fail(RuntimeError("the store's writer stopped before this append was committed"))
            return

        def requeue() -> None:
            if not pending.done.done():
                queue.waiting.appendleft(pending)
                self._kick(queue)

        if delay > 0:
            loop.call_later(delay, requeue)
        else:
            requeue()

    def aside(self, pending: Pending, work: Coroutine[Any, Any, None]) -> None:
        """Finish ``pending`` with ``work`` in a task of its own, outside the batches (for an
        append that must wait on something without holding up everyone else's). ``work``
        answers ``pending``; cancelled (its caller was), even before it began, it leaves
        ``pending`` cancelled. An abandoned ``pending`` is dropped instead (nothing was written)."""
        if pending.abandoned:
            work.close()
            pending.done.cancel()
            return

        def finished(task: asyncio.Task[None]) -> None:
            self._aside.discard(task)
            work.close()  # a task cancelled before its first step never ran it
            if not pending.done.done():
                pending.done.cancel()

        pending.aside = task = pending.done.get_loop().create_task(work)
        self._aside.add(task)
        task.add_done_callback(finished)

    def _kick(self, queue: _Queue) -> None:
        if queue.drain is None and queue.waiting:
            queue.drain = asyncio.get_running_loop().create_task(self._drain(queue))

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
                        if pending.in_batch:  # not one put back for a retry or finished aside
                            pending.fail(exc)
                for pending in batch:
                    if pending.in_batch and not pending.done.done():
                        pending.fail(RuntimeError("the store's commit left this append unanswered"))
                batch = []
        finally:
            queue.drain = None
            stopped = RuntimeError("the store's writer stopped before this append was committed")
            for pending in (*(p for p in batch if p.in_batch), *queue.waiting):
                pending.fail(stopped)
            queue.waiting.clear()
