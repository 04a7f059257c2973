"""SQLite connections for the store: one writer, many readers, and errors told apart.

WAL lets readers run beside a writer, but only on their own connections: a single
shared connection would make every read wait behind a write that is itself waiting
out another process's lock. So writes go through one connection under a lock (SQLite
allows one writer anyway) and reads take a connection of their own from a small pool.
Both run in worker threads, so the event loop never waits on disk or on a lock.

Errors that mean "the database cannot serve right now" (busy or locked past the
timeout, disk full, I/O errors, a file that cannot be opened) become
``StoreUnavailable``; after an I/O error the connection is reopened on next use, so
the store recovers by itself once the disk does.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread

from gateway.store.base import StoreUnavailable

T = TypeVar("T")

log = logging.getLogger("tether.store")

BUSY_TIMEOUT_SECONDS = 5.0
MIN_BUSY_WAIT = 0.01

_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_NOMEM, _SQLITE_IOERR = 5, 6, 7, 10
_SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_PROTOCOL = 13, 14, 15
_TRANSIENT = frozenset(
    {
        _SQLITE_BUSY,
        _SQLITE_LOCKED,
        _SQLITE_NOMEM,
        _SQLITE_IOERR,
        _SQLITE_FULL,
        _SQLITE_CANTOPEN,
        _SQLITE_PROTOCOL,
    }
)
_REOPEN = {_SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_PROTOCOL}
"""After these the connection itself may be unusable: open a fresh one."""


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def unavailable(exc: sqlite3.Error) -> StoreUnavailable | None:
    """The ``StoreUnavailable`` an SQLite error stands for, or None when it is a real error."""
    if primary_code(exc) not in _TRANSIENT:
        return None
    return StoreUnavailable(f"the SQLite database cannot serve: {exc}")


class Connections:
    """The writer and the readers of one database file (``:memory:`` has only the writer)."""

    def __init__(
        self,
        path: str,
        setup: Callable[[sqlite3.Connection], object],
        busy_timeout: float = BUSY_TIMEOUT_SECONDS,
    ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._shared_memory = path == ":memory:"
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = self._open()
        setup(self._writer)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._closed = False

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk when it returns
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    async def write(self, fn: Callable[[sqlite3.Connection], T], abandon_on_cancel: bool = False) -> T:
        """Run ``fn`` on the writer; waiting for the writer counts against the busy timeout.

        ``abandon_on_cancel`` lets a cancelled caller go at once while the thread finishes
        (for probes, whose outcome nobody needs)."""

        def call() -> T:
            started = time.monotonic()
            if not self._write_lock.acquire(timeout=self._busy_timeout):
                raise StoreUnavailable("the SQLite database is busy: writes are queued past the timeout")
            # SQLite's own wait gets only what is left, so one write never waits twice the timeout.
            left = max(self._busy_timeout - (time.monotonic() - started), MIN_BUSY_WAIT)
            try:
                if self._closed:
                    raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
                if self._writer is None:
                    self._writer = self._guarded(self._open)
                conn = self._writer
                try:
                    conn.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
                    return fn(conn)
                except sqlite3.Error as exc:
                    self._after_error(conn, exc)
                    raise self._translated(exc) from exc
            finally:
                self._write_lock.release()

        return await anyio.to_thread.run_sync(call, abandon_on_cancel=abandon_on_cancel)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a reader of its own, so it never waits behind a write."""
        if self._shared_memory:
            return await self.write(fn)

        def call() -> T:
            if self._closed:
                raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                conn = self._guarded(self._open)
            try:
                result = fn(conn)
            except sqlite3.Error as exc:
                conn.close()  # never reuse a reader that failed
                raise self._translated(exc) from exc
            except BaseException:
                conn.close()
                raise
            self._readers.put(conn)
            return result

        return await anyio.to_thread.run_sync(call)

    def _guarded(self, open_: Callable[[], sqlite3.Connection]) -> sqlite3.Connection:
        try:
            return open_()
        except sqlite3.Error as exc:
            raise self._translated(exc) from exc

    def _after_error(self, conn: sqlite3.Connection, exc: sqlite3.Error) -> None:
        """Leave the writer usable: roll back a transaction the error left open, and drop the
        connection when the error says it may be broken."""
        broken = primary_code(exc) in _REOPEN
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                broken = True
        if broken:
            log.warning("reopening the SQLite writer after: %s", exc)
            conn.close()
            self._writer = None

    @staticmethod
    def _translated(exc: sqlite3.Error) -> Exception:
        return unavailable(exc) or exc

    async def close(self) -> None:
        def close() -> None:
            with self._write_lock:
                self._closed = True
                if self._writer is not None:
                    self._writer.close()
                while True:
                    try:
                        self._readers.get_nowait().close()
                    except queue.Empty:
                        return

        await anyio.to_thread.run_sync(close)
