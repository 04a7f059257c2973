"""A sandbox template process: imported once, forked for every warm sandbox.

Each sandbox server is a Python process holding the MCP SDK's types, starlette and uvicorn:
about 60 MB, nearly all of it the same in every one. A zygote imports all that once, freezes
it out of the garbage collector's reach (``gc.freeze``, so collections never write to the
shared pages), and forks a child per warm sandbox; children share those pages copy-on-write
and pay only for what they change (about 15 MB each instead of 60).

The starter (``gateway.tools.zygote``) talks to the zygote over a ``SOCK_SEQPACKET`` socket
(``--zygote=FD``). A request is the word ``fork`` carrying two file descriptors, the new
child's stdin and stdout; the zygote forks and answers ``forked PID`` with a pidfd of the
child, which the starter waits on and signals through (never a pid that could be reused).
When a child exits the zygote reaps it and says ``exit PID CODE``. End of file on the socket
(the starter closed it or died) ends the zygote.

A child closes everything of the zygote's (the control socket, the signal pipe), puts the
two descriptors it was given on 0 and 1, asks to die with the zygote (which dies with the
starter), and returns into the ordinary warm path (``sandbox_server.warm``): it says
``warm`` and waits for its session's hand-over, exactly as a warm process started on its own.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import sys

from sandbox_server import launch, warm

MAX_MESSAGE = 64


def serve(control_fd: int) -> None:
    """Serve fork requests until the starter goes; returns only in a forked child."""
    control = socket.socket(fileno=control_fd)
    warm.preload()
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wake-up byte is written
    zygote = os.getpid()
    while True:
        readable, _, _ = select.select([control.fileno(), wake_r], [], [])
        if wake_r in readable:
            _drain(wake_r)
            _reap(control)
        if control.fileno() not in readable:
            continue
        try:
            message, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 2)
        except InterruptedError:
            continue
        if not message:
            sys.exit(0)  # the starter is gone; our children die with us
        if message != b"fork" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            sys.exit(f"tether sandbox zygote: a malformed request {message!r}")
        try:
            pid = os.fork()
        except OSError as exc:  # out of pids or memory: this fork fails, the template serves on
            for fd in fds:
                os.close(fd)
            control.send(b"failed %d" % (exc.errno or 0))
            continue
        if pid == 0:
            _become_child(control, (wake_r, wake_w), fds, zygote)
            return
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            os.kill(pid, signal.SIGKILL)  # not reaped yet (only this loop reaps): the pid is its own
            control.send(b"failed %d" % (exc.errno or 0))
            continue
        try:
            socket.send_fds(control, [b"forked %d" % pid], [pidfd])
        finally:
            os.close(pidfd)


def _become_child(control: socket.socket, wake: tuple[int, int], fds: list[int], zygote: int) -> None:
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    control.close()
    for fd in wake:
        os.close(fd)
    stdin, stdout = fds
    os.dup2(stdin, 0)
    os.dup2(stdout, 1)
    os.close(stdin)
    os.close(stdout)
    launch.die_with_parent(zygote)
    warm.retitle(["--warm"])  # a waiting child, not the template


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _reap(control: socket.socket) -> None:
    """Collect every exited child and tell the starter how each ended."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        try:
            control.send(b"exit %d %d" % (pid, os.waitstatus_to_exitcode(status)))
        except OSError:
            return
