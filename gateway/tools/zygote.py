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
_GONE = -int(signal.SIGKILL)
"""The exit code of a child whose template died (its children are killed with it)."""


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
        async with self._watching:
            if not self._ended:
                await anyio.wait_readable(self._pidfd)
            self._ended = True
        await self._reported.wait()
        assert self._code is not None
        return self._code

    def send_signal(self, value: int) -> None:
        if self._code is not None:
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
        with contextlib.suppress(OSError):
            os.close(self._pidfd)


class Zygote:
    """One template process, started on the first ``fork``; ``close`` stops it."""

    def __init__(self, pid_files: PidFiles | None = None) -> None:
        self._pid_files = pid_files
        self._process: anyio.abc.Process | None = None
        self._control: socket.socket | None = None
        self._pid_file: Any = None
        self._children: dict[int, ForkedProcess] = {}
        self._forked: list[tuple[int, int]] = []
        self._answer = anyio.Event()
        self._lock = anyio.Lock()
        self._reading: asyncio.Task[None] | None = None

    async def fork(self) -> ForkedProcess:
        """A new warm sandbox, forked from the template (started now if it is not running)."""
        async with self._lock:
            control = await self._running()
            ours_in, theirs_in = socket.socketpair()
            ours_out, theirs_out = socket.socketpair()
            try:
                self._answer = anyio.Event()
                socket.send_fds(control, [b"fork"], [theirs_in.fileno(), theirs_out.fileno()])
            finally:
                theirs_in.close()
                theirs_out.close()
            with anyio.move_on_after(10):
                await self._answer.wait()
            if not self._forked:
                ours_in.close()
                ours_out.close()
                await self.close()
                raise ZygoteFailed("the sandbox template did not answer a fork")
            pid, pidfd = self._forked.pop()
            child = ForkedProcess(
                pid,
                pidfd,
                await anyio.abc.SocketStream.from_socket(ours_in),
                await anyio.abc.SocketStream.from_socket(ours_out),
            )
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
                    message, fds, _, _ = socket.recv_fds(control, 64, 1)
                except BlockingIOError:
                    continue
                if not message:
                    break
                word, *numbers = message.split()
                if word == b"forked" and len(fds) == 1:
                    self._forked.append((int(numbers[0]), fds[0]))
                    self._answer.set()
                elif word == b"exit":
                    for fd in fds:
                        os.close(fd)
                    child = self._children.pop(int(numbers[0]), None)
                    if child is not None:
                        child.exited(int(numbers[1]))
        except (OSError, anyio.ClosedResourceError):
            pass
        finally:
            for child in self._children.values():  # the template is gone, and its children with it
                child.exited(_GONE)
            self._children.clear()
            self._answer.set()

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
        if self._pid_file is not None:
            PidFiles.forget(self._pid_file)
            self._pid_file = None
