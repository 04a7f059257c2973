"""One cgroup per ``bash`` command: a memory and a process-count limit for its whole process tree.

rlimits are per process (``RLIMIT_AS``) or per user (``RLIMIT_NPROC``, which root
ignores), so they cannot bound a tree of processes; a cgroup can, and it also
lists every process the command started, so a timeout can kill them all.

Each command's cgroup is created *beneath the server's own cgroup* in each
hierarchy (``/proc/self/cgroup``), so it stays inside whatever limits the service
manager or container put on the sandbox server, and it is removed after the
command. The child joins it between ``fork`` and ``exec``: the parent opens the
``cgroup.procs`` files and the pre-exec hook writes the child's pid into them, so
nothing the command runs can start outside the cgroup.

cgroup v1 (separate ``pids`` and ``memory`` hierarchies) and v2 (one unified
hierarchy with ``pids.max``/``memory.max``) are supported. On v2 the server's own
cgroup must be able to enable the controllers for children (no processes of its
own, or the root); otherwise ``CgroupFactory.create`` returns ``None`` and the
caller falls back to rlimits.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path

import anyio

log = logging.getLogger("tether.sandbox")

CGROUP_PREFIX = "tether-"
_EMPTY_WAIT = 5.0
_EMPTY_POLL = 0.005


@dataclass(frozen=True)
class _Mount:
    point: str
    root: str
    version: int
    options: frozenset[str]


def _unescape(path: str) -> str:
    """Mount points in mountinfo escape spaces and the like as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def _mounts(mountinfo: str) -> list[_Mount]:
    mounts: list[_Mount] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, super_options = fields[sep + 1], fields[sep + 3] if len(fields) > sep + 3 else ""
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            _Mount(
                point=_unescape(fields[4]),
                root=fields[3],
                version=2 if fstype == "cgroup2" else 1,
                options=frozenset(super_options.split(",")),
            )
        )
    return mounts


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller name (``""`` for v2) -> this process's cgroup path in that hierarchy."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            paths[controller] = parts[2]
    return paths


def _own_dir(mount: _Mount, own_path: str) -> Path:
    """Where this process's cgroup appears under ``mount`` (the mount point if it does not appear)."""
    root = mount.root.rstrip("/")
    if own_path == mount.root or own_path.startswith(root + "/"):
        candidate = Path(mount.point + own_path[len(root) :])
        if candidate.is_dir():
            return candidate
    return Path(mount.point)


@dataclass(frozen=True)
class CgroupLayout:
    """Parent directories for per-command cgroups: v1 has one per controller, v2 one for both."""

    version: int
    pids_parent: Path
    memory_parent: Path

    @property
    def parents(self) -> list[Path]:
        return list(dict.fromkeys([self.pids_parent, self.memory_parent]))


def discover_layout(mountinfo: str, proc_cgroup: str) -> CgroupLayout | None:
    """Find where per-command cgroups go, from ``/proc/self/mountinfo`` and ``/proc/self/cgroup`` text.

    v1 hierarchies carrying ``pids`` and ``memory`` are preferred (a hybrid host
    mounts an empty v2 tree next to them); otherwise a v2 tree offering both.
    """
    mounts = _mounts(mountinfo)
    own = _own_paths(proc_cgroup)
    v1 = {c: m for m in mounts if m.version == 1 for c in ("pids", "memory") if c in m.options}
    if "pids" in v1 and "memory" in v1:
        return CgroupLayout(
            version=1,
            pids_parent=_own_dir(v1["pids"], own.get("pids", "/")),
            memory_parent=_own_dir(v1["memory"], own.get("memory", "/")),
        )
    for mount in mounts:
        if mount.version != 2:
            continue
        try:
            available = Path(mount.point, "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if "pids" in available and "memory" in available:
            parent = _own_dir(mount, own.get("", "/"))
            return CgroupLayout(version=2, pids_parent=parent, memory_parent=parent)
    return None


def _read_counter(path: Path, key: str) -> int:
    """``key N`` from a flat-keyed cgroup file (``pids.events``, ``memory.events``, ``memory.oom_control``)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class CommandCgroup:
    """The cgroup(s) of one running command; ``attach`` runs in the child before ``exec``."""

    layout: CgroupLayout
    dirs: list[Path]
    _procs_fds: list[int] = field(default_factory=list)

    @property
    def pids_dir(self) -> Path:
        return self.dirs[0]

    @property
    def memory_dir(self) -> Path:
        return self.dirs[-1]

    def open_for_attach(self) -> None:
        self._procs_fds = [os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in self.dirs]

    def attach(self) -> None:
        """Move the calling process into the cgroup(s); meant for the child between fork and exec.

        Only async-signal-safe-ish work happens here: formatting an int and
        ``write`` on descriptors the parent opened.
        """
        pid = str(os.getpid()).encode()
        for fd in self._procs_fds:
            os.write(fd, pid)

    def close_fds(self) -> None:
        for fd in self._procs_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._procs_fds = []

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def memory_exceeded(self) -> bool:
        """Whether the kernel killed a process of this command for exceeding the memory limit."""
        if self.layout.version == 2:
            return _read_counter(self.memory_dir / "memory.events", "oom_kill") > 0
        return _read_counter(self.memory_dir / "memory.oom_control", "oom_kill") > 0

    def pids_exceeded(self) -> bool:
        """Whether a fork or clone of this command failed on the process limit."""
        return _read_counter(self.pids_dir / "pids.events", "max") > 0

    async def remove(self) -> None:
        """Kill whatever is left, wait for the cgroup(s) to empty, and delete them.

        Processes take a moment to leave after ``SIGKILL`` (a pid namespace is torn
        down asynchronously), so this polls briefly; a cgroup that will not empty
        in ``_EMPTY_WAIT`` seconds is left behind with a warning.
        """
        self.close_fds()
        with anyio.move_on_after(_EMPTY_WAIT):
            while True:
                self.kill_all()
                if self._try_rmdir():
                    return
                await anyio.sleep(_EMPTY_POLL)
        log.warning("could not remove command cgroup(s) %s; processes remain", self.dirs)

    def _try_rmdir(self) -> bool:
        for d in list(self.dirs):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    return False
                raise
        return True


class CgroupFactory:
    """Creates per-command cgroups; turns itself off (warning once) when the host does not allow them."""

    def __init__(self, layout: CgroupLayout | None = None, *, discover: bool = True) -> None:
        self._layout = layout
        self._discovered = layout is not None or not discover
        self._disabled = False
        self._swept = False
        self._counter = itertools.count(1)

    @property
    def layout(self) -> CgroupLayout | None:
        if not self._discovered:
            self._discovered = True
            try:
                self._layout = discover_layout(
                    Path("/proc/self/mountinfo").read_text(), Path("/proc/self/cgroup").read_text()
                )
            except OSError:
                self._layout = None
            if self._layout is None:
                self.disable("no cgroup hierarchy with the pids and memory controllers was found")
        return self._layout

    @property
    def enabled(self) -> bool:
        return not self._disabled and self.layout is not None

    def disable(self, reason: str) -> None:
        if not self._disabled:
            self._disabled = True
            log.warning(
                "cgroups unavailable (%s); falling back to rlimits: memory is limited per process "
                "(RLIMIT_AS) and the process limit (RLIMIT_NPROC) does not apply to root",
                reason,
            )

    def create(self, memory: int, pids: int) -> CommandCgroup | None:
        """A fresh cgroup with the limits set, or ``None`` (and cgroups disabled) if that fails."""
        layout = self.layout
        if layout is None or self._disabled:
            return None
        if not self._swept:
            self._swept = True
            sweep_stale(layout)
        name = f"{CGROUP_PREFIX}{os.getpid()}-{next(self._counter)}"
        dirs = [parent / name for parent in layout.parents]
        group = CommandCgroup(layout, dirs)
        try:
            if layout.version == 2:
                _enable_v2_controllers(layout.pids_parent)
            for d in dirs:
                d.mkdir()
            _write(group.pids_dir / "pids.max", str(pids))
            if layout.version == 2:
                _write(group.memory_dir / "memory.max", str(memory))
                with contextlib.suppress(OSError):
                    _write(group.memory_dir / "memory.swap.max", "0")
            else:
                _write(group.memory_dir / "memory.limit_in_bytes", str(memory))
                with contextlib.suppress(OSError):
                    _write(group.memory_dir / "memory.memsw.limit_in_bytes", str(memory))
            group.open_for_attach()
        except OSError as exc:
            group.close_fds()
            for d in reversed(dirs):
                with contextlib.suppress(OSError):
                    d.rmdir()
            self.disable(f"{exc.strerror or exc} creating {name}")
            return None
        return group


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _enable_v2_controllers(parent: Path) -> None:
    enabled = (parent / "cgroup.subtree_control").read_text().split()
    missing = [c for c in ("pids", "memory") if c not in enabled]
    if missing:
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def sweep_stale(layout: CgroupLayout) -> None:
    """Remove command cgroups left by sandbox servers that died (``kill -9``) before cleaning up.

    Only empty cgroups named after a pid that no longer exists are touched; the
    kernel refuses to remove a cgroup that still has processes.
    """
    for parent in layout.parents:
        for path in parent.glob(f"{CGROUP_PREFIX}*-*"):
            owner = path.name[len(CGROUP_PREFIX) :].split("-", 1)[0]
            if not owner.isdigit() or _alive(int(owner)):
                continue
            with contextlib.suppress(OSError):
                path.rmdir()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
