"""Tether processes the test run started and left running: at its end, each one fails the run.

A gateway or sandbox server that outlives its test is a leak no single test sees (a fixture
that forgot to stop it, a sandbox that did not die with its gateway). At the end of the run
every process on the host is looked at, and one counts as this run's when it is a Tether
server (``python -m gateway.cli|sandbox_server.*|tunnel_agent.*|tests.support.*``, or the
``tether`` script) and either descends from the pytest process, carries this run's mark in
its environment (``RUN_ENV``, inherited by everything the tests start with the run's
environment), or names the run's temporary directory in its command line (a sandbox server
gets a minimal environment, and an orphan no longer descends from anything). Other people's
runs on the same host are never counted, nor signalled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RUN_ENV = "TETHER_TEST_RUN"
SERVER_MODULES = ("gateway", "sandbox_server", "tunnel_agent", "tests.support")
EXIT_GRACE = 10.0
"""Seconds a just-stopped process (a sandbox killed as its gateway died) gets to finish exiting."""


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str


def mark_run() -> str:
    """Mark this run's environment, so every process it starts can be told apart; the mark."""
    mark = os.environ.setdefault(RUN_ENV, secrets.token_hex(8))
    return mark


def _argv(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    return []


def is_tether_server(argv: list[str]) -> bool:
    """Whether ``argv`` runs a part of Tether or a test server (not pytest, not a helper tool)."""
    if len(argv) >= 2 and os.path.basename(argv[1]) == "tether":
        return True
    if "-m" in argv[:-1]:
        module = argv[argv.index("-m") + 1]
        return any(module == name or module.startswith(name + ".") for name in SERVER_MODULES)
    return False


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _descends_from(pid: int, ancestor: int, parents: dict[int, int]) -> bool:
    seen = set()
    while pid in parents and pid not in seen:
        seen.add(pid)
        pid = parents[pid]
        if pid == ancestor:
            return True
    return False


def _marked(pid: int, mark: str) -> bool:
    with contextlib.suppress(OSError):
        return f"{RUN_ENV}={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return False


def find(mark: str, temp_dir: str | None, me: int | None = None) -> list[Leftover]:
    """This run's Tether processes still running (zombies excluded: they have exited)."""
    me = os.getpid() if me is None else me
    parents = _parents()
    found = []
    for pid in sorted(parents):
        argv = _argv(pid)
        if pid == me or not is_tether_server(argv):
            continue
        command = " ".join(argv)
        if (
            _descends_from(pid, me, parents)
            or _marked(pid, mark)
            or (temp_dir is not None and temp_dir in command)
        ):
            found.append(Leftover(pid, command))
    return found


def still_running(leftovers: Iterable[Leftover], grace: float = EXIT_GRACE) -> list[Leftover]:
    """Those of ``leftovers`` that have not exited within ``grace`` seconds (waited for on pidfds)."""
    opened: dict[int, tuple[Leftover, int]] = {}
    for leftover in leftovers:
        with contextlib.suppress(OSError):
            opened[os.pidfd_open(leftover.pid)] = (leftover, leftover.pid)
    try:
        poller = select.poll()
        for fd in opened:
            poller.register(fd, select.POLLIN)
        waiting = set(opened)
        deadline = time.monotonic() + grace
        while waiting and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(int(left * 1000) + 1):
                waiting.discard(fd)
                poller.unregister(fd)
        return [opened[fd][0] for fd in sorted(waiting, key=lambda fd: opened[fd][1])]
    finally:
        for fd in opened:
            os.close(fd)


def kill(leftovers: Iterable[Leftover]) -> None:
    """SIGKILL each one, through a pidfd checked to still name a Tether server (never a recycled pid)."""
    for leftover in leftovers:
        try:
            fd = os.pidfd_open(leftover.pid)
        except OSError:
            continue
        try:
            if " ".join(_argv(leftover.pid)) == leftover.command:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)
