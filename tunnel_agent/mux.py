"""The stream multiplexer both ends of a tunnel run over one link.

Three loops per link: the *reader* decodes frames and never waits on an application (each
stream's receive buffer is bounded by the credit it granted, so buffering is always
possible); the *writer* sends queued frames, pings and credits first; the *pinger* sends a
ping every ``ping_interval`` and ends the link when nothing comes back within
``ping_timeout`` (while streams are open, every ``busy_ping_interval`` within
``busy_ping_timeout`` if those are set: calls in flight learn of a frozen peer in about a
second, while an idle link pings rarely). When the link ends every unfinished stream fails with
``StreamReset(LINK_LOST)``, so no caller waits forever on a dead connection.

Streams are ``anyio.abc.ByteStream``s with half-close (``send_eof``) and abort (``reset``).
"""

from __future__ import annotations

import enum
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from tunnel_agent.link import Link, LinkClosed
from tunnel_agent.protocol import (
    INITIAL_WINDOW,
    MAX_DATA,
    MAX_STREAM_ID,
    MAX_WINDOW,
    ErrorCode,
    Frame,
    FrameType,
    ProtocolError,
    close_frame,
    credit_frame,
    data_frame,
    decode,
    encode,
    error_frame,
    open_frame,
    ping_frame,
    pong_frame,
)

log = logging.getLogger("tether.tunnel.mux")

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008
CLOSE_PING_TIMEOUT = 4408

HIGH_WATER = 4 * 1024 * 1024
"""Queued DATA bytes above which senders wait for the link to drain (link backpressure)."""
MAX_BACKLOG = 10_000
"""Frames queued in reply to the peer (pongs, credits, refusals) beyond which the peer is
flooding a link it does not read, and the link is closed."""


class Role(enum.Enum):
    """Which stream ids a side opens, so both ends can open without colliding."""

    GATEWAY = 2
    """Opens even ids."""
    AGENT = 1
    """Opens odd ids."""


@dataclass(frozen=True)
class MuxSettings:
    ping_interval: float = 5.0
    ping_timeout: float = 5.0
    """A link with no pong (and no other inbound frame) this long after a ping is dead."""
    window: int = INITIAL_WINDOW
    """Per-stream credit granted to the peer; the most a stream ever buffers unread."""
    max_streams: int = 512
    """Concurrent streams the peer may open on this link; more are refused ``OVERLOADED``."""
    busy_ping_interval: float | None = None
    busy_ping_timeout: float | None = None
    """Pinging while any stream is open (None: as when idle); never slower than idle."""

    def ping_schedule(self, busy: bool) -> tuple[float, float]:
        """(interval, timeout) for a link with or without open streams."""
        if not busy:
            return self.ping_interval, self.ping_timeout
        interval = min(self.ping_interval, self.busy_ping_interval or self.ping_interval)
        return interval, min(self.ping_timeout, self.busy_ping_timeout or self.ping_timeout)


@dataclass
class MuxCounters:
    streams_opened: int = 0
    streams_accepted: int = 0
    resets_sent: dict[ErrorCode, int] = field(default_factory=dict)
    resets_received: dict[ErrorCode, int] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    pings_sent: int = 0
    pongs_received: int = 0
    last_rtt: float | None = None
    """Seconds between the latest answered ping and its pong."""


class StreamReset(Exception):
    """The stream was aborted: by the peer (``by_peer``), locally, or because the link died."""

    def __init__(self, code: ErrorCode, message: str, by_peer: bool) -> None:
        super().__init__(f"{code.name.lower()}: {message}")
        self.code = code
        self.message = message
        self.by_peer = by_peer


StreamHandler = Callable[["MuxStream"], Awaitable[None]]


class MuxStream(anyio.abc.ByteStream):
    """One bidirectional byte stream inside a link, with per-stream credit flow control."""

    def __init__(self, mux: Mux, stream_id: int, target: str, window: int) -> None:
        self.id = stream_id
        self.target = target
        self._mux = mux
        self._window = window
        self._buffer: deque[bytes] = deque()
        self._buffered = 0
        self._allowance = window
        """Bytes the peer may still send before we grant more."""
        self._consumed = 0
        """Bytes the application read since the last credit we granted."""
        self._credit = window
        """Bytes we may still send."""
        self._eof_in = False
        self._eof_out = False
        self._failure: StreamReset | None = None
        self._readable = anyio.Event()
        self._writable = anyio.Event()
        self._aborted = anyio.Event()

    @property
    def buffered(self) -> int:
        """Received bytes not yet read by the application (never more than the window)."""
        return self._buffered

    @property
    def finished(self) -> bool:
        return self._failure is not None or (self._eof_in and self._eof_out)

    async def wait_aborted(self) -> StreamReset:
        """Return once the stream is reset (by either side or a lost link).

        Lets a handler that is busy elsewhere (waiting on an upstream server) stop as soon
        as nobody wants its answer any more.
        """
        await self._aborted.wait()
        assert self._failure is not None
        return self._failure

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._failure is not None and (self._failure.by_peer or not self._eof_in):
                raise StreamReset(self._failure.code, self._failure.message, self._failure.by_peer)
            if self._buffer:
                return self._take(max_bytes)
            if self._eof_in:
                raise anyio.EndOfStream
            self._readable = anyio.Event()
            await self._readable.wait()

    def _take(self, max_bytes: int) -> bytes:
        chunk = self._buffer.popleft()
        if len(chunk) > max_bytes:
            self._buffer.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._buffered -= len(chunk)
        self._consumed += len(chunk)
        if self._consumed >= self._window // 2 and not self._eof_in and self._failure is None:
            # Re-grant what was read, so the peer never has more than one window in flight.
            self._allowance += self._consumed
            self._mux._send_control(credit_frame(self.id, self._consumed))
            self._consumed = 0
        return chunk

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            self._check_sendable()
            if self._credit == 0:
                self._writable = anyio.Event()
                await self._writable.wait()
                continue
            if self._mux._queued_bytes >= HIGH_WATER:
                await self._mux._wait_drained()
                continue
            size = min(len(view), self._credit, MAX_DATA)
            self._credit -= size
            self._mux._send_ordered(data_frame(self.id, bytes(view[:size])))
            self._mux.counters.bytes_sent += size
            view = view[size:]

    def _check_sendable(self) -> None:
        if self._failure is not None:
            raise StreamReset(self._failure.code, self._failure.message, self._failure.by_peer)
        if self._eof_out:
            raise anyio.ClosedResourceError

    async def send_eof(self) -> None:
        if self._eof_out or self._failure is not None:
            return
        self._eof_out = True
        self._mux._send_ordered(close_frame(self.id))
        self._finish_if_done()

    def reset(self, code: ErrorCode, message: str) -> None:
        """Abort both directions and tell the peer why (a no-op on a finished stream)."""
        if self.finished:
            return
        self._failure = StreamReset(code, message, by_peer=False)
        self._mux.counters.resets_sent[code] = self._mux.counters.resets_sent.get(code, 0) + 1
        self._mux._send_ordered(error_frame(self.id, code, message))
        self._wake()
        self._mux._forget(self)

    async def aclose(self) -> None:
        """Done with the stream: half-close if the peer already finished, else cancel it."""
        if self.finished:
            self._mux._forget(self)
        elif not self._eof_in:
            self.reset(ErrorCode.CANCELLED, "closed before the end of the stream")
        else:
            await self.send_eof()

    # Called by the mux's reader -----------------------------------------------------------

    def _on_data(self, payload: bytes) -> None:
        if self._eof_in or len(payload) > self._allowance:
            reason = "DATA after CLOSE" if self._eof_in else "flow-control window exceeded"
            self.reset(ErrorCode.PROTOCOL, reason)
            return
        self._allowance -= len(payload)
        self._buffer.append(payload)
        self._buffered += len(payload)
        self._mux.counters.bytes_received += len(payload)
        self._readable.set()

    def _on_close(self) -> None:
        self._eof_in = True
        self._readable.set()
        self._finish_if_done()

    def _on_credit(self, increment: int) -> None:
        if self._credit + increment > MAX_WINDOW:
            self.reset(ErrorCode.PROTOCOL, "credit overflow")
            return
        self._credit += increment
        self._writable.set()

    def _fail(self, failure: StreamReset) -> None:
        if self._failure is None:
            self._failure = failure
        self._wake()

    def _wake(self) -> None:
        self._readable.set()
        self._writable.set()
        if self._failure is not None:
            self._aborted.set()

    def _finish_if_done(self) -> None:
        if self._eof_in and self._eof_out:
            self._mux._forget(self)


class Mux:
    """Run ``run()`` in a task; ``open()`` streams from elsewhere while it runs."""

    def __init__(
        self,
        link: Link,
        role: Role,
        *,
        accept: StreamHandler | None = None,
        settings: MuxSettings | None = None,
        name: str = "tunnel",
        on_close: Callable[[Mux], None] | None = None,
    ) -> None:
        self._link = link
        self._role = role
        self._accept = accept
        self.settings = settings or MuxSettings()
        self.name = name
        self._on_close = on_close
        self.counters = MuxCounters()
        self._streams: dict[int, MuxStream] = {}
        self._next_id = role.value
        self._last_peer_id = 0
        self._ordered: deque[Frame] = deque()
        self._control: deque[Frame] = deque()
        self._pending = anyio.Event()
        self._queued_bytes = 0
        self._drained = anyio.Event()
        self._pong: tuple[bytes, anyio.Event] | None = None
        self._wake = anyio.Event()
        """Set when a stream opens or a pong arrives: the pinger re-checks its schedule (an
        idle link switches to the busy one at once, even with a ping outstanding)."""
        self._last_received = 0.0
        self._scope: anyio.CancelScope | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._started = False
        self._ended = anyio.Event()
        self.close_code: int | None = None
        self.close_reason: str | None = None

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    def open(self, target: str) -> MuxStream:
        """A new stream to ``target``; ``LinkClosed`` once the link has ended.

        Frames queue until ``run()`` starts, so a stream may be opened on a mux that is
        registered but not yet running.
        """
        if self.closed:
            raise LinkClosed(self.close_reason or "link not running", self.close_code)
        stream_id = self._next_id
        if stream_id > MAX_STREAM_ID:
            raise LinkClosed("stream ids exhausted; reconnect")
        self._next_id += 2
        stream = MuxStream(self, stream_id, target, self.settings.window)
        self._streams[stream_id] = stream
        self.counters.streams_opened += 1
        self._wake.set()
        self._send_ordered(open_frame(stream_id, target))
        return stream

    async def run(self) -> None:
        """Serve the link until it closes, breaks the protocol, or misses a pong deadline.

        Returns normally in every case (``close_code``/``close_reason`` say why); every
        stream still open then fails with ``StreamReset(LINK_LOST)``.
        """
        if self._ended.is_set():
            return
        self._started = True
        self._last_received = anyio.current_time()
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                self._scope = tasks.cancel_scope
                if self.closed:
                    tasks.cancel_scope.cancel()
                tasks.start_soon(self._read_loop, name=f"{self.name} reader")
                tasks.start_soon(self._write_loop, name=f"{self.name} writer")
                tasks.start_soon(self._ping_loop, name=f"{self.name} pinger")
        finally:
            self._end("link closed", None)
            self._shutdown_streams()
            with anyio.move_on_after(2, shield=True):
                await self._link.close(_sendable(self.close_code), self.close_reason or "")
            self._ended.set()

    async def aclose(self, code: int = 1000, reason: str = "closing") -> None:
        """Close the link with a WebSocket close code (e.g. 4401 after a token rotation)."""
        self._end(reason, code)
        if not self._started:
            self._shutdown_streams()
            with anyio.move_on_after(2, shield=True):
                await self._link.close(code, reason)
            self._ended.set()
            return
        await self._ended.wait()

    async def wait_closed(self) -> None:
        await self._ended.wait()

    # Loops ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                message = await self._link.receive()
                frame = decode(message)
            except LinkClosed as exc:
                self._end(exc.reason, exc.code)
                return
            except ProtocolError as exc:
                log.warning("%s: protocol error from peer: %s", self.name, exc)
                self._end(f"protocol error: {exc}", CLOSE_PROTOCOL_ERROR)
                return
            self._last_received = anyio.current_time()
            try:
                self._dispatch(frame)
            except ProtocolError as exc:
                log.warning("%s: protocol error from peer: %s", self.name, exc)
                self._end(f"protocol error: {exc}", CLOSE_PROTOCOL_ERROR)
                return

    async def _write_loop(self) -> None:
        while True:
            while not self._control and not self._ordered:
                self._pending = anyio.Event()
                await self._pending.wait()
            frame = self._control.popleft() if self._control else self._ordered.popleft()
            try:
                await self._link.send(encode(frame))
            except LinkClosed as exc:
                self._end(exc.reason, exc.code)
                return
            if frame.type is FrameType.DATA:
                self._queued_bytes -= len(frame.payload)
                if self._queued_bytes < HIGH_WATER // 2:
                    self._drained.set()

    async def _ping_loop(self) -> None:
        last_ping = anyio.current_time()
        while True:
            due = last_ping + self.settings.ping_schedule(bool(self._streams))[0]
            if not await self._sleep_until(due):
                continue  # woken early: the schedule may have changed
            last_ping = anyio.current_time()
            missed = await self._ping()
            if missed is not None:
                log.warning("%s: no pong within %gs; closing the link", self.name, missed)
                self._end(f"no pong within {missed:g}s", CLOSE_PING_TIMEOUT)
                return

    async def _sleep_until(self, deadline: float) -> bool:
        """True once ``deadline`` passes; False as soon as the pinger is woken before it."""
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            return True
        self._wake = anyio.Event()
        with anyio.move_on_after(remaining):
            await self._wake.wait()
            return False
        return True

    async def _ping(self) -> float | None:
        """None when the pong or any other frame came back in time; else the timeout missed
        (that of the schedule in force, which shortens if a stream opens meanwhile)."""
        nonce = os.urandom(8)
        answered = anyio.Event()
        self._pong = (nonce, answered)
        sent_at = anyio.current_time()
        self._send_control(ping_frame(nonce))
        self.counters.pings_sent += 1
        while True:
            timeout = self.settings.ping_schedule(bool(self._streams))[1]
            if answered.is_set() or await self._sleep_until(sent_at + timeout):
                break
        if answered.is_set():
            self.counters.pongs_received += 1
            self.counters.last_rtt = anyio.current_time() - sent_at
            return None
        # Inbound traffic after the ping also proves the link lives (a pong can queue
        # behind a large transfer); the peer's own pinger checks the other direction.
        return None if self._last_received > sent_at else timeout

    # Frames from the peer ---------------------------------------------------------------

    def _dispatch(self, frame: Frame) -> None:
        kind = frame.type
        if kind is FrameType.PING:
            self._reply(pong_frame(frame.payload))
            return
        if kind is FrameType.PONG:
            if self._pong is not None and self._pong[0] == frame.payload:
                self._pong[1].set()
                self._wake.set()
            return
        if kind is FrameType.OPEN:
            self._on_open(frame)
            return
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            return  # late frame for a stream already finished or reset: ignore
        if kind is FrameType.DATA:
            stream._on_data(frame.payload)
        elif kind is FrameType.CLOSE:
            stream._on_close()
        elif kind is FrameType.CREDIT:
            stream._on_credit(frame.credit)
        elif kind is FrameType.ERROR:
            code, message = frame.error
            self.counters.resets_received[code] = self.counters.resets_received.get(code, 0) + 1
            stream._fail(StreamReset(code, message, by_peer=True))
            self._forget(stream)

    def _on_open(self, frame: Frame) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 == self._role.value % 2:
            raise ProtocolError(f"peer opened stream {stream_id}, which has our parity")
        if stream_id <= self._last_peer_id:
            raise ProtocolError(f"peer reused or reordered stream id {stream_id}")
        self._last_peer_id = stream_id
        if self._accept is None:
            self._reply(error_frame(stream_id, ErrorCode.REFUSED, "this side accepts no streams"))
            return
        if len(self._streams) >= self.settings.max_streams:
            self._reply(error_frame(stream_id, ErrorCode.OVERLOADED, "too many concurrent streams"))
            return
        stream = MuxStream(self, stream_id, frame.target, self.settings.window)
        self._streams[stream_id] = stream
        self.counters.streams_accepted += 1
        self._wake.set()
        assert self._tasks is not None
        self._tasks.start_soon(self._serve, stream, self._accept, name=f"{self.name} stream {stream_id}")

    async def _serve(self, stream: MuxStream, handler: StreamHandler) -> None:
        try:
            await handler(stream)
        except StreamReset:
            pass
        except Exception:
            log.exception("%s: handler for stream %d failed", self.name, stream.id)
            stream.reset(ErrorCode.INTERNAL, "the stream handler failed")
        finally:
            await stream.aclose()

    # Internals used by streams ----------------------------------------------------------

    def _send_ordered(self, frame: Frame) -> None:
        """OPEN, DATA, CLOSE and ERROR keep their order within a stream."""
        if not self.closed:
            self._ordered.append(frame)
            if frame.type is FrameType.DATA:
                self._queued_bytes += len(frame.payload)
            self._pending.set()

    def _send_control(self, frame: Frame) -> None:
        """PING, PONG and CREDIT jump the queue: they must never wait behind bulk data."""
        if not self.closed:
            self._control.append(frame)
            self._pending.set()

    def _reply(self, frame: Frame) -> None:
        """A frame the reader owes the peer; a peer that keeps asking while not reading its
        side of the link would grow these queues without bound, so it is cut off."""
        if len(self._control) + len(self._ordered) > MAX_BACKLOG:
            log.warning("%s: peer floods a link it does not read; closing", self.name)
            self._end("peer floods the link without reading it", CLOSE_POLICY)
            return
        if frame.type is FrameType.ERROR:
            self._send_ordered(frame)
        else:
            self._send_control(frame)

    async def _wait_drained(self) -> None:
        if self._drained.is_set():
            self._drained = anyio.Event()
        if self._queued_bytes >= HIGH_WATER and not self.closed:
            await self._drained.wait()

    def _forget(self, stream: MuxStream) -> None:
        if self._streams.get(stream.id) is stream:
            del self._streams[stream.id]

    def _end(self, reason: str, code: int | None) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self.close_code = code
            if self._on_close is not None:
                self._on_close(self)
        if self._scope is not None:
            self._scope.cancel()

    def _shutdown_streams(self) -> None:
        failure = StreamReset(ErrorCode.LINK_LOST, f"tunnel link lost: {self.close_reason}", by_peer=False)
        for stream in list(self._streams.values()):
            stream._fail(failure)
        self._streams.clear()
        self._ordered.clear()
        self._control.clear()
        self._queued_bytes = 0
        self._drained.set()


def _sendable(code: int | None) -> int:
    """A close code that may appear in a close frame (1005/1006/1015 are reserved)."""
    if code is not None and (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        return code
    return 1000
