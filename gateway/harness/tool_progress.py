"""A running tool call's ``notifications/progress`` as previews for ``event_deltas`` streams.

Each notification becomes a ``tether.tool_progress`` preview tied to the pending
``agent.tool_use`` / ``agent.mcp_tool_use`` event id::

    {"type": "tether.tool_progress", "event_id": "sevt_...", "progress": 2.0,
     "total": 5.0, "message": "step 2 of 5"}

``total`` and ``message`` are null when the tool gives none. At most one preview per call
is published every ``MIN_INTERVAL`` seconds: notifications arriving faster replace the one
waiting (newest wins), and the one still waiting when the call ends is published then, so a
stream's last preview of a call is its latest state. Like every preview, none is stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from gateway.harness.previews import TOOL_PROGRESS, Preview, PreviewHub
from gateway.store.base import Body

log = logging.getLogger("tether.previews")

MIN_INTERVAL = 0.1
"""Seconds between two previews of one call (at most 10 a second)."""
MAX_MESSAGE_CHARS = 2_000
"""A progress message longer than this is cut: a preview is a status line, not a log."""


class ToolProgress:
    """One tool call's progress reporter; its ``report`` is the MCP client's progress callback."""

    def __init__(
        self, hub: PreviewHub, session_id: str, anchor: int, event_id: str, tasks: TaskGroup
    ) -> None:
        self._hub = hub
        self._session_id = session_id
        self._anchor = anchor
        self._event_id = event_id
        self._tasks = tasks
        self._waiting: Body | None = None
        self._last = -MIN_INTERVAL
        self._scheduled = False

    async def report(self, progress: float, total: float | None, message: str | None) -> None:
        """Never raises and never waits: it runs in the MCP client's receive loop."""
        try:
            self._waiting = {
                "type": TOOL_PROGRESS,
                "event_id": self._event_id,
                "progress": progress,
                "total": total,
                "message": message[:MAX_MESSAGE_CHARS] if message is not None else None,
            }
            wait = self._last + MIN_INTERVAL - time.monotonic()
            if wait <= 0:
                self.flush()
            elif not self._scheduled:
                self._scheduled = True
                self._tasks.start_soon(self._flush_after, wait)
        except Exception:
            log.exception("progress of a tool call in %s not previewed", self._session_id)

    def flush(self) -> None:
        """Publish the notification waiting, if any."""
        body, self._waiting = self._waiting, None
        if body is not None:
            self._last = time.monotonic()
            self._hub.publish(self._session_id, Preview(self._anchor, TOOL_PROGRESS, body))

    async def _flush_after(self, wait: float) -> None:
        await anyio.sleep(wait)
        self._scheduled = False
        self.flush()


@asynccontextmanager
async def tool_progress(
    hub: PreviewHub, session_id: str, anchor: int, event_id: str
) -> AsyncIterator[ToolProgress]:
    """A reporter for the call made inside the block; its last notification is published on exit."""
    async with anyio.create_task_group() as tasks:
        reporter = ToolProgress(hub, session_id, anchor, event_id, tasks)
        try:
            yield reporter
        finally:
            tasks.cancel_scope.cancel()
    reporter.flush()
