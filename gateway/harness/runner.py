"""Schedules harness runs: at most one per session in this process, cancellable by interrupt."""

from __future__ import annotations

import logging

import anyio
import anyio.abc

from gateway.harness import events as ev
from gateway.harness.loop import Harness, Progress, interrupted_request_end
from gateway.harness.transcript import RESULT_TYPES

log = logging.getLogger("tether.runner")

INTERRUPTED = "The tool call was interrupted by the user before it finished."


class SessionRunner:
    def __init__(self, harness: Harness, task_group: anyio.abc.TaskGroup) -> None:
        self.harness = harness
        self._tasks = task_group
        self._scopes: dict[str, anyio.CancelScope] = {}
        self._again: set[str] = set()

    def wake(self, session_id: str) -> None:
        """Make sure the session's log gets looked at; cheap to call repeatedly."""
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

    def is_running(self, session_id: str) -> bool:
        return session_id in self._scopes

    async def _drive(self, session_id: str) -> None:
        try:
            while True:
                scope = self._scopes[session_id]
                progress = Progress()
                with scope:
                    try:
                        await self.harness.run(session_id, progress)
                    except Exception as exc:
                        log.exception("harness failed for %s", session_id)
                        with anyio.CancelScope(shield=True):
                            await self._record_failure(session_id, exc)
                if scope.cancelled_caught:
                    with anyio.CancelScope(shield=True):
                        await self._record_interrupt(session_id, progress)
                if session_id not in self._again:
                    return
                self._again.discard(session_id)
                self._scopes[session_id] = anyio.CancelScope()
        finally:
            self._scopes.pop(session_id, None)

    async def _record_interrupt(self, session_id: str, progress: Progress) -> None:
        """Close off whatever was in flight so the log reads as a finished turn."""
        if await self.harness.store.get("session", session_id) is None:
            return
        closing = []
        if progress.model_start_id is not None:
            closing.append(interrupted_request_end(progress.model_start_id))
        call = progress.tool_call
        if call is not None:
            result_type, link = RESULT_TYPES[call.kind]
            closing.append(ev.text_result(result_type, link, call.id, INTERRUPTED, True))
        closing.append(ev.status_idle("end_turn"))
        await self.harness.append(session_id, *closing)

    async def _record_failure(self, session_id: str, exc: Exception) -> None:
        if await self.harness.store.get("session", session_id) is None:
            return
        await self.harness.append(
            session_id,
            ev.session_error("unknown_error", f"the harness failed: {type(exc).__name__}"),
            ev.status_idle("end_turn"),
        )
