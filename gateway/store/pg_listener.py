"""The PostgreSQL store's LISTEN connection: wake-ups from every process's appends.

Appends ``pg_notify`` inside their transaction (delivered only on commit); one LISTEN
connection per store fans them out to in-process waiters, so a process wakes when
another one appends. Notifications sent while it is disconnected are lost, so every
(re)connection wakes all waiters once to re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from gateway.store.notifier import Notifier

log = logging.getLogger("gateway.store.postgres")

CHANNEL = "tether_events"
"""NOTIFY channel; the payload is the session id, after ``GONE`` when it was deleted."""
GONE = "deleted "

LISTENER_APPLICATION_NAME = "tether-listener"
"""Names the LISTEN connection in ``pg_stat_activity`` (operators and tests can find it)."""


class Waiters(Notifier):
    def notify_all(self) -> None:
        """Wake every waiter so it re-checks the log (after notifications may have been lost)."""
        for key in list(self._events):
            self.notify(key)


class Listener:
    """The store's one LISTEN connection, kept alive and fanned out to in-process waiters.

    Notifications sent while it is disconnected are lost, so every (re)connection wakes all
    waiters once: each re-reads ``last_seq`` and goes back to sleep if nothing is new.
    """

    _RETRY_FIRST = 0.05
    _RETRY_MAX = 2.0

    def __init__(self, dsn: str, waiters: Waiters, ping_interval: float) -> None:
        self._dsn = dsn
        self._waiters = waiters
        self._ping_interval = ping_interval
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.connects = 0
        """How many times LISTEN was set up; observable for tests and diagnostics."""

    async def start(self) -> None:
        """Listen before returning (a failure here fails ``connect``), then supervise."""
        await self._listen()
        self._task = asyncio.create_task(self._supervise(), name="tether-pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    async def _listen(self) -> None:
        conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": LISTENER_APPLICATION_NAME}, timeout=5.0
        )
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(CHANNEL, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._conn, self._lost = conn, lost
        self.connects += 1
        self._waiters.notify_all()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._waiters.notify(payload.removeprefix(GONE), gone=payload.startswith(GONE))

    async def _supervise(self) -> None:
        while True:
            await self._until_lost()
            log.warning("store listener connection lost; reconnecting")
            await self._disconnect()
            delay = self._RETRY_FIRST
            while True:
                try:
                    await self._listen()
                    break
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    log.warning("store listener reconnect failed (%s); retrying in %.2fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._RETRY_MAX)

    async def _until_lost(self) -> None:
        """Return once the connection is closed or stops answering pings."""
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), self._ping_interval)
                return
            except TimeoutError:
                pass
            assert self._conn is not None
            try:
                await self._conn.fetchval("SELECT 1", timeout=self._ping_interval)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()
