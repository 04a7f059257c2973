"""A private Docker engine for the image tests, with a base image made without any registry.

No container registry is reachable from the machines the suite runs on, and the host may have
no Docker daemon at all. So the tests start their own ``dockerd`` (Debian's ``docker.io``,
installed through ``provision`` like every other system package) on a socket and exec root of
their own, with a data root under a stable cache directory (``CACHE_ENV``, by default
``~/.cache/tether-tests/docker``) so that the base image and the build cache survive from
one run to the next. The base image is a ``debootstrap --variant=minbase bookworm`` tree,
made once from Debian's package mirror, kept as a tarball in the same cache and imported
with ``docker import``. The engine is stopped at the end with every process it started
(containerd, shims) gone: a test checks ``stop``'s result.

The storage driver is ``overlay2`` where this host can mount an overlay filesystem on the
cache's disk (a probe mount says), else ``vfs``, which works anywhere but copies the whole
image for every build step: a build that takes a minute on ``overlay2`` takes over a quarter
of an hour on ``vfs`` on 2 cores. ``STORAGE_ENV`` forces one.

Only one run may use the data root at a time: the engine holds an exclusive lock on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CACHE_ENV = "TETHER_TEST_DOCKER_CACHE"
STORAGE_ENV = "TETHER_TEST_DOCKER_STORAGE"
BASE_IMAGE = "tether-test/bookworm-minbase:latest"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LOCK_TIMEOUT = 1800.0
"""A concurrent run holding the engine may be building images: wait that long for it."""


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "tether-tests" / "docker")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def storage_driver(cache: Path) -> str:
    """``overlay2`` when an overlay mount works on the cache's filesystem, else ``vfs``."""
    forced = os.environ.get(STORAGE_ENV)
    if forced:
        return forced
    probe = Path(tempfile.mkdtemp(prefix="overlay-probe-", dir=cache))
    try:
        for part in ("lower", "upper", "work", "merged"):
            (probe / part).mkdir()
        options = f"lowerdir={probe / 'lower'},upperdir={probe / 'upper'},workdir={probe / 'work'}"
        mounted = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if mounted.returncode != 0:
            return "vfs"
        subprocess.run(["umount", str(probe / "merged")], capture_output=True, timeout=30, check=False)
        return "overlay2"
    except OSError:
        return "vfs"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _children(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        for child in _children(todo.pop()):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if _alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@dataclass
class Engine:
    """A running ``dockerd`` and the ``docker`` command line pointed at it."""

    process: subprocess.Popen[bytes]
    socket: Path
    exec_root: Path
    log: Path
    _lock: int
    _started: list[int] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        # The legacy builder: the docker client here has no buildx plugin for BuildKit.
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}

    def docker(
        self, *args: str, timeout: float = 120.0, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["docker", *args],
            env=self.env,
            capture_output=True,
            text=stdin is None,
            input=stdin,
            timeout=timeout,
            check=False,
        )
        if isinstance(done.stdout, bytes):
            done = subprocess.CompletedProcess(
                done.args, done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode()
            )
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... failed ({done.returncode}):\n{done.stderr}")
        return done

    def ready(self) -> bool:
        return (
            self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10).returncode == 0
        )

    def stop(self) -> list[int]:
        """Remove every container, stop the daemon and whatever it started; the pids that
        survived (none, unless something went wrong)."""
        with contextlib.suppress(Exception):
            ids = self.docker("ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=60)
        family = [self.process.pid, *_descendants(self.process.pid)]
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        survivors = _wait_gone(family, 10)
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        left = _wait_gone(survivors, 10)
        _unmount_below(self.exec_root)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        if not survivors and not left:
            (cache_dir() / "dockerd.owner").unlink(missing_ok=True)
        os.close(self._lock)
        return survivors + [pid for pid in left if pid not in survivors]


def _unmount_below(root: Path) -> None:
    """dockerd leaves its network namespace mounted in the exec root; unmount it (deepest first)."""
    prefix = str(root) + "/"
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30, check=False)


def _stop_stale(owner: Path) -> None:
    """Stop the engine a killed run left behind (the lock is free, so its run is gone)."""
    with contextlib.suppress(OSError, ValueError):
        pid_text, exec_root = owner.read_text().split()
        pid = int(pid_text)
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if command and command[0].endswith(b"dockerd") and exec_root.encode() in b" ".join(command):
            family = [pid, *_descendants(pid)]
            os.kill(pid, signal.SIGTERM)
            for survivor in _wait_gone(family, STOP_TIMEOUT):
                os.kill(survivor, signal.SIGKILL)
            _wait_gone(family, 10)
        _unmount_below(Path(exec_root))
        shutil.rmtree(exec_root, ignore_errors=True)
    owner.unlink(missing_ok=True)


def start_engine() -> Engine:
    """Start ``dockerd`` on a private socket, the data root in the cache (waits for the lock)."""
    cache = cache_dir()
    lock = os.open(cache / "lock", os.O_CREAT | os.O_RDWR, 0o600)
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(lock)
                raise RuntimeError(f"another test run holds {cache / 'lock'} (its Docker engine)") from None
            time.sleep(0.5)
    _stop_stale(cache / "dockerd.owner")
    # The socket path must stay short (108 bytes), so the per-run parts live in /tmp.
    exec_root = Path(tempfile.mkdtemp(prefix="tdock-"))
    sock = exec_root / "docker.sock"
    log = cache / "dockerd.log"
    command = [
        "dockerd",
        f"--storage-driver={storage_driver(cache)}",
        "--iptables=false",
        "--ip-masq=false",
        "--bridge=none",
        "-H",
        f"unix://{sock}",
        "--data-root",
        str(cache / "data"),
        "--exec-root",
        str(exec_root / "exec"),
        "--pidfile",
        str(exec_root / "dockerd.pid"),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    (cache / "dockerd.owner").write_text(f"{process.pid}\n{exec_root}\n")
    engine = Engine(process, sock, exec_root, log, lock)
    deadline = time.monotonic() + START_TIMEOUT
    while not (sock.exists() and engine.ready()):
        if process.poll() is not None or time.monotonic() > deadline:
            engine.stop()
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise RuntimeError(f"dockerd did not start (see {log}):\n{tail}")
        time.sleep(0.2)
    return engine


def base_image(engine: Engine, name: str = BASE_IMAGE) -> str:
    """The debootstrapped Debian image, imported once and kept in the engine's data root."""
    if engine.docker("image", "inspect", name, check=False).returncode == 0:
        return name
    tarball = cache_dir() / "bookworm-minbase.tar"
    if not tarball.exists():
        _debootstrap(tarball)
    engine.docker("import", str(tarball), name, timeout=600)
    return name


def _debootstrap(tarball: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tether-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), DEBIAN_MIRROR],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr}")
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "-cf", str(partial), "."], check=True, timeout=600)
        partial.rename(tarball)


@contextlib.contextmanager
def running_engine() -> Iterator[Engine]:
    engine = start_engine()
    try:
        yield engine
    finally:
        engine.stop()
