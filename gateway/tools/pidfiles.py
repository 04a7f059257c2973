"""Pid files of running sandboxes, so a restarted gateway stops those that survived it.

Each file names one process exactly (pid, start time, boot id) and the gateway that owns it;
``stop_leftovers`` stops a recorded process only if it is still that very process and its owner
is gone, through a pidfd opened before the check, so a recycled pid is never signalled and a
live replica's sandboxes on a shared data dir are left alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("tether.sandbox")

STOP_GRACE = 5.0

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The start time of a live process (clock ticks since boot, ``/proc/PID/stat`` field 22);
    None if there is no such process or it already exited (a zombie). With the pid and the boot
    it names one process for good: a recycled pid has a later start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass(frozen=True)
class _Recorded:
    session_id: str
    pid: int
    start: str
    boot: str
    owner_pid: int
    owner_start: str

    @classmethod
    def load(cls, path: Path) -> _Recorded | None:
        try:
            data = json.loads(path.read_text())
            owner = data["owner"]
            return cls(
                str(data["session_id"]),
                int(data["pid"]),
                str(data["start"]),
                str(data["boot"]),
                int(owner["pid"]),
                str(owner["start"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


class PidFiles:
    """``<session id>.<pid>.json`` per running sandbox: the process, and the gateway that owns it.

    Gateways on one data directory (replicas on one host) share the folder: a sandbox whose
    owner still runs is left alone, whoever looks.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def record(self, session_id: str, pid: int) -> Path | None:
        """Write the pid file of a just-started sandbox; None if it could not be written (or the
        child is already gone). Never raises: the sandbox still dies with this gateway."""
        start, owner_start = process_start(pid), process_start(os.getpid())
        if start is None or owner_start is None:
            return None
        document = {
            "session_id": session_id,
            "pid": pid,
            "start": start,
            "boot": _boot_id(),
            "owner": {"pid": os.getpid(), "start": owner_start},
        }
        path = self.directory / f"{session_id}.{pid}.json"
        partial = path.with_suffix(".tmp")
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            partial.write_text(json.dumps(document))
            partial.replace(path)
        except OSError as exc:
            log.warning("could not record sandbox pid %d in %s: %s", pid, self.directory, exc)
            return None
        return path

    @staticmethod
    def forget(path: Path) -> None:
        path.unlink(missing_ok=True)

    def stop_leftovers(self, grace: float = STOP_GRACE) -> list[int]:
        """Stop every recorded sandbox that still runs although the gateway that started it is
        gone: SIGTERM, then SIGKILL after ``grace``. Stale files are removed; a process whose
        start time or boot differs from the record (a recycled pid) is never signalled."""
        if not self.directory.is_dir():
            return []
        boot = _boot_id()
        victims: dict[int, tuple[int, Path]] = {}  # pid -> (pidfd, file)
        for path in sorted(self.directory.glob("*.json")):
            recorded = _Recorded.load(path)
            if recorded is None or recorded.boot != boot:
                path.unlink(missing_ok=True)
                continue
            if process_start(recorded.owner_pid) == recorded.owner_start:
                continue  # its gateway still runs (a replica on this data directory)
            pidfd = _open_exact(recorded.pid, recorded.start)
            if pidfd is None:
                path.unlink(missing_ok=True)
                continue
            log.warning(
                "stopping sandbox pid %d for %s, left running by a previous gateway",
                recorded.pid,
                recorded.session_id,
            )
            victims[recorded.pid] = (pidfd, path)
        try:
            for pidfd, _ in victims.values():
                _signal(pidfd, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for pidfd, _ in victims.values():
                if not _wait_exit(pidfd, deadline - time.monotonic()):
                    _signal(pidfd, signal.SIGKILL)
                    _wait_exit(pidfd, STOP_GRACE)
        finally:
            for pidfd, path in victims.values():
                os.close(pidfd)
                path.unlink(missing_ok=True)
        return sorted(victims)


def _open_exact(pid: int, start: str) -> int | None:
    """A pidfd for ``pid`` if it is still the recorded process (checked after opening, so the
    fd cannot end up naming a process that took the pid over later)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if process_start(pid) != start:
        os.close(pidfd)
        return None
    return pidfd


def _signal(pidfd: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signum)


def _wait_exit(pidfd: int, timeout: float) -> bool:
    """Whether the process exited within ``timeout`` seconds (a pidfd polls readable on exit)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))
