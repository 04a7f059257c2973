"""Schedules harness runs: one writer per session across every gateway process.

A run holds the session's lease (renewed in the background, every append fenced
with it). Sessions whose owner died are found by a periodic pickup scan and
resumed from the log, as are sessions with client input no run has answered
yet (a durable wake-up written with the input, so a crash between accepting a
message and waking the harness strands nothing). On shutdown, running sessions are
handed back as ``rescheduling`` so another process (or the next start) continues them.

The runner is meant to be given a patient store (``gateway.store.patient``): a
database outage pauses runs instead of failing them.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid

import anyio
import anyio.abc

from gateway.harness import interrupts, outcomes
from gateway.harness.loop import Harness
from gateway.harness.responses import interrupted_request_end
from gateway.harness.run import Run
from gateway.sessionlog import events as ev
from gateway.store.base import LeaseLost

log = logging.getLogger("tether.runner")

DEFAULT_LEASE_TTL = 15.0
SHUTDOWN_HANDBACK_SECONDS = 10.0


def process_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class SessionRunner:
    def __init__(
        self,
        harness: Harness,
        task_group: anyio.abc.TaskGroup,
        owner: str | None = None,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        self.harness = harness
        self.store = harness.store
        self.owner = owner or process_owner()
        self.lease_ttl = lease_ttl
        self._tasks = task_group
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._runs: dict[str, Run] = {}
        self._again: set[str] = set()
        self._contended: set[str] = set()
        """Sessions to look at again on the next pickup: held elsewhere, or whose drive failed."""
        self._stopping = False

    def wake(self, session_id: str) -> None:
        """Make sure the session's log gets looked at; cheap to call repeatedly."""
        if self._stopping:
            return
        if session_id in self._scopes:
            self._again.add(session_id)
            return
        self._scopes[session_id] = anyio.CancelScope()
        self._tasks.start_soon(self._drive, session_id, name=f"harness {session_id}")

    def interrupt(self, session_id: str) -> None:
        self._again.discard(session_id)
        scope = self._scopes.get(session_id)
        if scope is not None:
            scope.cancel()

    async def pickup_forever(self, interval: float | None = None) -> None:
        """Resume sessions whose owner vanished, and retry sessions another process held."""
        period = interval if interval is not None else max(self.lease_ttl / 3, 0.2)
        while True:
            for session_id in await self.store.sessions_needing_harness(100):
                self.wake(session_id)
            for session_id in list(self._contended):
                self.wake(session_id)
            await anyio.sleep(period)

    async def shutdown(self) -> None:
        """Stop every run and hand its session back (``rescheduling``) for someone to resume."""
        self._stopping = True
        runs = list(self._runs.values())
        for session_id in list(self._scopes):
            self._scopes[session_id].cancel()
        # Bounded: with the database down a handback would wait forever; the leases then
        # simply expire and pickup resumes the sessions anyway.
        with anyio.CancelScope(shield=True) as handback:
            handback.deadline = anyio.current_time() + SHUTDOWN_HANDBACK_SECONDS
            for run in runs:
                try:
                    await self.harness.append(run, ev.new_event("session.status_rescheduled"))
                except LeaseLost:
                    continue
                if run.lease is not None:
                    await self.store.release_lease(run.lease)

    async def _drive(self, session_id: str) -> None:
        try:
            while not self._stopping and await self._drive_once(session_id):
                self._again.discard(session_id)
                self._scopes[session_id] = anyio.CancelScope()
        except Exception:
            # Never let one session take the process's task group down; pickup tries again.
            log.exception("driving %s failed; the next pickup retries it", session_id)
            self._contended.add(session_id)
        finally:
            self._scopes.pop(session_id, None)

    async def _drive_once(self, session_id: str) -> bool:
        """One run under the lease; True when the session needs another look at once."""
        lease = await self.store.acquire_lease(session_id, self.owner, self.lease_ttl)
        if lease is None:
            self._contended.add(session_id)
            return False
        self._contended.discard(session_id)
        run = Run(session_id, lease)
        self._runs[session_id] = run
        try:
            await self._run_once(run)
            if not self._stopping and run.lease is not None:
                # Everything up to what this run has seen is handled: no pickup needed for it.
                await self.store.mark_answered(run.lease, run.last_seq)
        finally:
            self._runs.pop(session_id, None)
            if not self._stopping and run.lease is not None:
                with anyio.CancelScope(shield=True):
                    await self.store.release_lease(run.lease)
        # Something appended after this run's last look (here or by another process)?
        newer = await self.store.last_seq(session_id) > run.last_seq
        return session_id in self._again or newer

    async def _run_once(self, run: Run) -> None:
        scope = self._scopes[run.session_id]
        lost = False
        with scope:
            async with anyio.create_task_group() as keepalive:
                keepalive.start_soon(self._renew, run, scope)
                try:
                    await self._close_interrupted(run)
                    await self.harness.run(run)
                except LeaseLost:
                    lost = True
                    log.warning("lost the lease on %s; another process continues it", run.session_id)
                except Exception as exc:
                    log.exception("harness failed for %s", run.session_id)
                    with anyio.CancelScope(shield=True):
                        await self._record_failure(run, exc)
                keepalive.cancel_scope.cancel()
        if lost or self._stopping:
            run.lease = None if lost else run.lease
            return
        if scope.cancelled_caught:
            with anyio.CancelScope(shield=True):
                await self._record_interrupt(run)

    async def _renew(self, run: Run, scope: anyio.CancelScope) -> None:
        """Keep the lease alive. During a store outage the renewal waits (the store is patient);
        the fence keeps a takeover meanwhile safe, and the renewal reports it once it is back."""
        while True:
            await anyio.sleep(self.lease_ttl / 3)
            assert run.lease is not None
            try:
                run.lease = await self.store.renew_lease(run.lease, self.lease_ttl)
            except LeaseLost:
                log.warning("lease on %s was taken over; stopping this run", run.session_id)
                run.lease = None
                scope.cancel()
                return

    async def _record_interrupt(self, run: Run) -> None:
        """Close off whatever was in flight so the log reads as a finished turn."""
        if await self.store.get("session", run.session_id) is None or run.lease is None:
            return
        closing = []
        if run.model_start_id is not None:
            closing.append(interrupted_request_end(run.model_start_id))
        # The call that was running, any the model asked for that had not started yet, and any
        # waiting for the client.
        closing += interrupts.closing_results(await self.harness.transcript(run))
        closing.append(ev.status_idle("end_turn"))
        try:
            await self.harness.append(run, *closing)
            await outcomes.sync(self.store, run.session_id, await self.harness.transcript(run))
        except LeaseLost:
            pass

    async def _close_interrupted(self, run: Run) -> None:
        """Close the calls of an interrupt no run here was cut short by: the session waited for
        a confirmation or a custom tool's result, or its run was in another process."""
        closing = interrupts.closing_results(await self.harness.transcript(run))
        if closing and await self.store.get("session", run.session_id) is not None:
            await self.harness.append(run, *closing)
            await outcomes.sync(self.store, run.session_id, await self.harness.transcript(run))

    async def _record_failure(self, run: Run, exc: Exception) -> None:
        if await self.store.get("session", run.session_id) is None:
            return
        try:
            await self.harness.append(
                run,
                ev.session_error("unknown_error", f"the harness failed: {type(exc).__name__}"),
                ev.status_idle("end_turn"),
            )
        except LeaseLost:
            pass
