"""Throwaway PostgreSQL clusters: the run's shared one, and those a test restarts and stops itself.

The tests never assume a server on 127.0.0.1:5432. Tests that only need databases share one
cluster per run (``shared_cluster``: started on first use, stopped by ``stop_shared_cluster``
at the end of the run; ``tests.support.postgres`` creates a database per test in it). Outage
tests, which restart or stop their server, run one of their own. Both are ``initdb`` and ``pg_ctl``
from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``; the system
cluster need not exist), in a fresh temporary directory, on a free loopback port, with trust
authentication. PostgreSQL refuses to run as root, so a root test runs the binaries as the
``postgres`` system user (``runuser``) on a directory that user owns. Leaving the ``with``
block stops the server, waits until none of its processes is left and deletes the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"
PG_CTL_TIMEOUT = 60
"""Seconds ``pg_ctl`` waits for a start, restart or stop (``-t``)."""
START_ATTEMPTS = 3
"""A free port can be taken between choosing it and binding it; try again with another."""

SPEED_OVER_SAFETY = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=200 -c shared_buffers=32MB"
)
"""A test cluster never needs to survive a power cut."""


def bin_dir() -> Path:
    """The newest installed PostgreSQL's binaries (fails loudly when there are none)."""
    found = [path for path in PG_ROOT.glob("*/bin") if (path / "initdb").exists()]
    if not found:
        raise RuntimeError(f"no PostgreSQL server binaries under {PG_ROOT}/*/bin (install postgresql)")
    return max(found, key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else -1)


@dataclass
class PgCluster:
    root: Path
    """Owned by the server's user: ``data/`` (the cluster), ``server.log`` and the socket."""
    port: int
    binaries: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def dsn(self) -> str:
        return self.dsn_on(self.port)

    def dsn_on(self, port: int) -> str:
        """The DSN for this cluster's ``postgres`` database reached through ``port`` (a proxy's)."""
        return f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            + SPEED_OVER_SAFETY
        )
        self._pg_ctl("start", "-l", str(self.log_file), "-o", options)

    def restart(self) -> None:
        """A real restart: a fast shutdown (every session is ended) and a start on the same port."""
        self._pg_ctl("restart", "-m", "fast", "-l", str(self.log_file))

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    @property
    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _pg_ctl(self, *args: str) -> None:
        """Run ``pg_ctl`` and wait for it. A command that starts the server must pass ``-l``:
        without a log file the server would inherit, and hold open, our output pipes."""
        command = [str(self.binaries / "pg_ctl"), *args, "-D", str(self.data_dir), "-w"]
        done = _run_as_server_user([*command, "-t", str(PG_CTL_TIMEOUT)], timeout=PG_CTL_TIMEOUT + 30)
        if done.returncode != 0:
            raise RuntimeError(
                f"pg_ctl {args[0]} failed ({done.returncode}): {done.stdout}{done.stderr}\n{self.log_tail()}"
            )


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PgCluster]:
    """``initdb`` and start a cluster on a free loopback port; yield it; stop and delete it."""
    root = Path(tempfile.mkdtemp(prefix="tether-pg-"))
    try:
        _give_to_server_user(root)
        binaries = bin_dir()
        cluster = PgCluster(root, 0, binaries)
        initdb = _run_as_server_user(
            [
                str(binaries / "initdb"),
                "-D",
                str(cluster.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            timeout=120,
        )
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}): {initdb.stdout}{initdb.stderr}")
        _start_on_a_free_port(cluster)
        yield cluster
    finally:
        _tear_down(root)


_shared: tuple[contextlib.ExitStack, PgCluster] | None = None
_shared_lock = threading.Lock()


def shared_cluster() -> PgCluster:
    """The run's shared cluster, started (``throwaway_cluster``) by the first caller."""
    global _shared
    with _shared_lock:
        if _shared is None:
            stack = contextlib.ExitStack()
            _shared = stack, stack.enter_context(throwaway_cluster())
        return _shared[1]


def stop_shared_cluster() -> bool:
    """Stop and delete the shared cluster; whether there was one."""
    global _shared
    with _shared_lock:
        started, _shared = _shared, None
    if started is None:
        return False
    started[0].close()
    return True


def _start_on_a_free_port(cluster: PgCluster) -> None:
    for attempt in range(START_ATTEMPTS):
        cluster.port = _free_port()
        try:
            cluster.start()
            return
        except RuntimeError:
            if attempt == START_ATTEMPTS - 1 or "could not bind" not in cluster.log_tail():
                raise


def _tear_down(root: Path) -> None:
    data = root / "data"
    if (data / "postmaster.pid").exists():
        binaries = bin_dir()
        _run_as_server_user(
            [str(binaries / "pg_ctl"), "stop", "-m", "immediate", "-w", "-t", "30", "-D", str(data)],
            timeout=60,
        )
    _kill_leftovers(data)
    shutil.rmtree(root, ignore_errors=True)


def _kill_leftovers(data: Path) -> None:
    """Every PostgreSQL process works in its data directory: end any still there."""
    deadline = time.monotonic() + 10
    while pids := _processes_in(data):
        if time.monotonic() > deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.05)


def _processes_in(directory: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") == str(directory):
                pids.append(int(entry.name))
    return pids


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_root() -> bool:
    return os.geteuid() == 0


def _give_to_server_user(root: Path) -> None:
    if _as_root():
        user = pwd.getpwnam(SERVER_USER)
        os.chown(root, user.pw_uid, user.pw_gid)
    root.chmod(0o700)


def _run_as_server_user(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as ``postgres`` when we are root (PostgreSQL refuses root), else as us."""
    full = ["runuser", "-u", SERVER_USER, "--", *command] if _as_root() else list(command)
    # The server inherits this environment: keep the caller's locale and PG* settings out of it.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C"}
    return subprocess.run(
        full, capture_output=True, text=True, timeout=timeout, env=env, cwd="/", stdin=subprocess.DEVNULL
    )
