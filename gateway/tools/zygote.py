"""The starter's side of the sandbox template (``sandbox_server.zygote``): warm sandboxes forked
from one imported process instead of each started from scratch.

``Zygote.fork`` hands the template a fresh socket pair's far ends as the child's stdin and
stdout and gets back its pid and a pidfd. The child is then a ``ForkedProcess``: an
``anyio.abc.Process`` like one ``anyio.open_process`` returns, so the warm pool and the
sandbox pool treat it as any other sandbox (hand-over on stdin, ready line on stdout, stop
with SIGTERM then SIGKILL). Signals go through the pidfd, so a reused pid is never hit; the
exit is seen on the pidfd and its code comes from the template, which reaps its children.

The template dies with the gateway (``PR_SET_PDEATHSIG``, like every sandbox), and its
children die with it. If it dies anyway, its children are gone too: each ``ForkedProcess``
then reads as exited, and the next ``fork`` starts a new template.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
from typing import Any

import anyio
import anyio.abc
from anyio.abc import ByteReceiveStream, ByteSendStream

from gateway.tools.pidfiles import PidFiles
from sandbox_server import launch
from sandbox_server.warm import ROOM

log = logging.getLogger("tether.sandbox")

ZYGOTE_LABEL = "zygote"
"""The pid file label of the template process."""
FORK_DEADLINE = 30.0
"""Seconds a fork may take, the template's own start (its imports) included."""
_GONE = -int(signal.SIGKILL)
"""The exit code of a child whose template died (its children are killed with it)."""


def _receive(control: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors it carries, close-on-exec from the start (the stdlib's
    ``socket.recv_fds`` drops the flag that asks for it)."""
    fds = array.array("i")
    message, ancillary, _, _ = control.recvmsg(64, socket.CMSG_LEN(fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return message, list(fds)


class ZygoteFailed(Exception):
    """The template could not be started or did not answer a fork."""


class ForkedProcess(anyio.abc.Process):
    """A child of the template, driven like a child of this process."""

    def __init__(
        self, pid: int, pidfd: int, stdin: anyio.abc.SocketStream, stdout: anyio.abc.SocketStream
    ) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._stdin = stdin
        self._stdout = stdout
        self._code: int | None = None
        self._reported = anyio.Event()
        self._ended = False
        self._watching = anyio.Lock()

    def exited(self, code: int) -> None:
        """The template reaped this child (or died, taking it along)."""
        if self._code is None:
            self._code = code
        self._reported.set()

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._code

    @property
    def stdin(self) -> ByteSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> ByteReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> ByteReceiveStream | None:
        return None  # shared with the template's, which is the gateway's

    async def wait(self) -> int:
        """Its exit code, once it is gone (the pidfd says so; the template says how)."""
        if self._code is not None and (self._code != _GONE or self._pidfd < 0):
            return self._code  # reaped by the template: gone for sure
        async with self._watching:
            if not self._ended and self._pidfd >= 0:
                await anyio.wait_readable(self._pidfd)
            self._ended = True
        await self._reported.wait()
        assert self._code is not None
        return self._code

    def send_signal(self, value: int) -> None:
        if self._code is not None or self._pidfd < 0:
            raise ProcessLookupError(self._pid)
        signal.pidfd_send_signal(self._pidfd, value)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def aclose(self) -> None:
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._stdin.aclose()
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self._stdout.aclose()
        if self._code is None:
            with contextlib.suppress(ProcessLookupError):
                self.kill()
            await self.wait()
        if self._pidfd >= 0:
            await self.wait()  # a child of a dead template: until it is really gone
            os.close(self._pidfd)
            self._pidfd = -1


class Zygote:
    """One template process, started on the first ``fork``; ``close`` stops it (and its
    children). A template that stopped answering is ``retire``d: it gets no more forks, but
    lives on for the sandboxes it already forked until ``close``."""

    def __init__(self, pid_files: PidFiles | None = None) -> None:
        self._pid_files = pid_files
        self._process: anyio.abc.Process | None = None
        self._control: socket.socket | None = None
        self._pid_file: Any = None
        self._children: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}
        """Exits reported before their child was registered (it can end at once)."""
        self._answers: list[tuple[int, int] | int] = []
        """``(pid, pidfd)`` for a fork, or the errno the template could not fork with."""
        self._answered = anyio.Event()
        self._lock = anyio.Lock()
        self._reading: asyncio.Task[None] | None = None
        self.retired = False

    async def fork(self) -> ForkedProcess:
        """A new warm sandbox, forked from the template (started now if it is not running).
        ``OSError`` if the kernel refused the fork; ``ZygoteFailed`` if the template cannot
        be started or did not answer (it is then retired)."""
        async with self._lock:
            if self.retired:
                raise ZygoteFailed("the sandbox template was retired")
            ours_in, theirs_in = socket.socketpair()
            ours_out, theirs_out = socket.socketpair()
            streams: list[anyio.abc.SocketStream] = []
            child: ForkedProcess | None = None
            try:
                streams.append(await anyio.abc.SocketStream.from_socket(ours_in))
                streams.append(await anyio.abc.SocketStream.from_socket(ours_out))
                with anyio.move_on_after(FORK_DEADLINE):
                    child = self._register(await self._ask(theirs_in, theirs_out), *streams)
            finally:
                theirs_in.close()
                theirs_out.close()
                if child is None:  # its streams' transports go with them, so no fd is reused under them
                    with anyio.CancelScope(shield=True):
                        for stream in streams:
                            await stream.aclose()
                    for raw in (ours_in, ours_out)[len(streams) :]:
                        raw.close()
            if child is None:
                self.retired = True
                raise ZygoteFailed(f"the sandbox template did not answer a fork within {FORK_DEADLINE:.0f} s")
            return child

    async def _ask(self, stdin: socket.socket, stdout: socket.socket) -> tuple[int, int] | int:
        """Send one fork request (restarting a template found dead) and wait for its answer."""
        for attempt in (1, 2):
            control = await self._running()
            self._answered = anyio.Event()
            try:
                socket.send_fds(control, [b"fork"], [stdin.fileno(), stdout.fileno()])
            except OSError:
                if attempt == 2:
                    raise ZygoteFailed("the sandbox template is gone") from None
                self._control = None  # it died: the next round starts another
                continue
            while not self._answers:
                if self._reading is None or self._reading.done():
                    raise ZygoteFailed("the sandbox template died while forking")
                await self._answered.wait()
                self._answered = anyio.Event()
            return self._answers.pop(0)
        raise AssertionError("unreachable")

    def _register(
        self, answer: tuple[int, int] | int, stdin: anyio.abc.SocketStream, stdout: anyio.abc.SocketStream
    ) -> ForkedProcess:
        if isinstance(answer, int):
            raise OSError(answer, f"the sandbox template could not fork: {os.strerror(answer)}")
        pid, pidfd = answer
        child = ForkedProcess(pid, pidfd, stdin, stdout)
        if pid in self._exits:
            child.exited(self._exits.pop(pid))
        elif self._reading is None or self._reading.done():
            child.exited(_GONE)  # its template died since: so did it
        else:
            self._children[pid] = child
        return child

    async def _running(self) -> socket.socket:
        if self._control is not None and self._process is not None and self._process.returncode is None:
            return self._control
        await self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = await anyio.open_process(
                launch.zygote_command(ROOM, theirs.fileno()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=None,
                env=launch.environment(None),
                pass_fds=[theirs.fileno()],
            )
        except OSError as exc:
            ours.close()
            raise ZygoteFailed(f"the sandbox template could not be started: {exc}") from exc
        finally:
            theirs.close()
        if self._pid_files is not None:
            self._pid_file = self._pid_files.record(ZYGOTE_LABEL, self._process.pid)
        ours.setblocking(False)
        self._control = ours
        self._reading = asyncio.get_running_loop().create_task(self._read(ours))
        return ours

    async def _read(self, control: socket.socket) -> None:
        try:
            while True:
                await anyio.wait_readable(control)
                try:
                    message, fds = _receive(control)
                except BlockingIOError:
                    continue
                if not message:
                    break
                word, *numbers = message.split()
                if word == b"forked" and len(fds) == 1:
                    self._answers.append((int(numbers[0]), fds[0]))
                    self._answered.set()
                    continue
                for fd in fds:
                    os.close(fd)
                if word == b"failed":
                    self._answers.append(int(numbers[0]))
                    self._answered.set()
                elif word == b"exit":
                    pid, code = int(numbers[0]), int(numbers[1])
                    child = self._children.pop(pid, None)
                    if child is not None:
                        child.exited(code)
                    else:
                        self._exits[pid] = code
        except (OSError, anyio.ClosedResourceError):
            pass
        finally:
            for child in self._children.values():  # the template is gone, and its children with it
                child.exited(_GONE)
            self._children.clear()
            self._answered.set()

    async def close(self) -> None:
        """Stop the template; its children (warm or serving) die with it."""
        process, control = self._process, self._control
        self._process = self._control = None
        if control is not None:
            anyio.notify_closing(control)
            control.close()
        if process is not None:
            await launch.stop(process, grace=0)
        if self._reading is not None:
            await self._reading
            self._reading = None
        for _, pidfd in (a for a in self._answers if isinstance(a, tuple)):
            os.close(pidfd)
        self._answers.clear()
        self._exits.clear()
        if self._pid_file is not None:
            PidFiles.forget(self._pid_file)
            self._pid_file = None
