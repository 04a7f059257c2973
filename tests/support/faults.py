"""Store outages a test can cause on purpose: a held SQLite write lock, a full filesystem, and a
TCP gate in front of PostgreSQL that drops every connection and refuses new ones for a while.

Each helper undoes what it did (locks released, files removed, mounts unmounted, threads
joined) even when the test fails. A ``time.sleep`` inside a helper holds the outage open:
that sleep is the fault, not a synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LOCK_WAIT_SECONDS = 30.0
"""How long to wait for the gateway's own write transaction to finish before taking the lock."""


# SQLite -----------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_write_lock_held(path: Path) -> Iterator[None]:
    """Hold ``BEGIN EXCLUSIVE`` on the database at ``path`` from another connection.

    In WAL mode an exclusive transaction blocks every writer but no reader.
    """
    conn = sqlite3.connect(path, timeout=LOCK_WAIT_SECONDS, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.close()


def truncate_wal(path: Path) -> None:
    """Checkpoint the database at ``path`` and truncate its write-ahead log to zero bytes.

    A WAL restarts from its beginning after a checkpoint, so writes can reuse space the file
    already holds; truncating first makes the next write need new blocks, which is what a full
    filesystem refuses.
    """
    conn = sqlite3.connect(path, timeout=LOCK_WAIT_SECONDS, isolation_level=None)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise RuntimeError(f"could not truncate the WAL of {path}: the checkpoint stayed busy")
    finally:
        conn.close()


# A small, full filesystem ------------------------------------------------------------------


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "16m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``) on ``directory`` (created if missing), yield
    it, then unmount it. Needs root, like the tests that use it."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        check=True,
        capture_output=True,
        text=True,
    )
    try:
        yield directory
    finally:
        unmounted = subprocess.run(["umount", str(directory)], capture_output=True, text=True)
        if unmounted.returncode != 0:
            # Busy (a child still holds a file open): detach it now; the kernel frees it later.
            subprocess.run(["umount", "--lazy", str(directory)], check=True, capture_output=True)


@contextlib.contextmanager
def fill(path: Path) -> Iterator[int]:
    """Write ``path`` until its filesystem answers ENOSPC, yield the bytes written, then delete
    the file (which frees the space)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = 0
    try:
        chunk = 1 << 20
        while chunk:
            try:
                written += os.write(fd, b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
        os.close(fd)
        fd = -1
        yield written
    finally:
        if fd >= 0:
            os.close(fd)
        path.unlink(missing_ok=True)


# PostgreSQL behind a gate -------------------------------------------------------------------


class TcpGate:
    """A loopback TCP proxy in front of ``(host, port)`` that can cut the line for a while.

    ``refuse(seconds)`` resets every open connection, closes the listening socket (so a
    connect is refused at once, as by a server that is down) and reopens it on the same port
    after ``seconds``. Runs an asyncio loop in one thread; ``close()`` (or leaving the ``with``
    block) stops it and every connection.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-gate", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.accepted = 0
        """Connections accepted so far (a test can check its traffic went through the gate)."""

    def __enter__(self) -> TcpGate:
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def refuse(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for ``seconds``, then accept again."""
        self._call(self._cut())
        time.sleep(seconds)
        self._call(self._listen())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._cut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        # A reset ends each handler's pumps; one still dialling upstream is cancelled.
        handlers = list(self._handlers)
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.accepted += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            pumps = [
                asyncio.ensure_future(_pump(reader, upstream)),
                asyncio.ensure_future(_pump(up_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.CancelledError):
            # Returning normally: asyncio (3.11) logs a cancelled connection handler as an error.
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.transport.abort()
                    self._writers.discard(end)
            self._handlers.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
