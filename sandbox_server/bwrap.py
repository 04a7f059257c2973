"""The ``bash`` tool in bubblewrap: one ``bwrap`` process per command.

Isolation (``bwrap_argv``): every namespace is unshared, so the command sees its
own pid tree (bwrap is pid 1), only a loopback interface, and a mount tree built
from scratch: read-only ``/usr`` (and the ``/bin``, ``/lib``... links into it), a
few read-only files of ``/etc`` plus a generated ``passwd``/``group``/``hosts``
(handed to bwrap through pipes, so no file is left on the host), a
fresh ``/proc`` with the kernel's knobs read-only and its sensitive files masked
(``PROC_READ_ONLY``, ``PROC_MASKED``, as container runtimes do), a fresh ``/dev``, a
size-limited tmpfs ``/tmp``, and the workspace read-write (nosuid, nodev) at
``/workspace``. Nothing else of the host (``/root``, ``/home``, ``/var``, ``/sys``, the
server's own files) exists inside.

Identity (``identity``): the command runs as uid 1000 in a user namespace with every
capability dropped and no further user namespaces allowed. That uid is an unprivileged
host uid: the server's own, or, when the server is root, one from the sandbox range that
the child becomes before bwrap starts (``drop_privileges``). The sandbox never holds host
root or any host capability.

Host paths: none reaches the sandbox. The workspace and the egress directory are bound
from descriptors (``--bind-fd``), and bwrap reads its whole command line from a memfd
(``--args``), so ``/proc/1/cmdline`` shows ``bwrap --args N`` and the command, nothing of the host.

Network: none but loopback, unless the server runs an egress proxy
(``sandbox_server.egress``): then its directory is bound read-only into every
command, the shell starts the in-sandbox forwarder before the command, and the
proxy and CA variables (and credential placeholders) join the environment.

Environment: ``--clearenv`` plus a minimal set inside, and ``bwrap`` itself is
started with an *empty* environment: it is pid 1 of the sandbox, so
``/proc/1/environ`` shows bwrap's own environment to the command.

Limits: a per-command cgroup (``cgroups``) bounds memory and process count for
the whole tree and lists every process to kill; ``RLIMIT_FSIZE`` (the disk quota)
and ``RLIMIT_CORE=0`` always apply; without cgroups, ``RLIMIT_AS``/``RLIMIT_NPROC``
stand in. Lifetime: ``--die-with-parent`` plus the pid namespace mean that when
the command's shell exits, or the server kills bwrap, every process of the
command dies too; nothing outlives its call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from sandbox_server.cgroups import CgroupFactory, CommandCgroup
from sandbox_server.egress.mount import EgressMount
from sandbox_server.execution import Finished
from sandbox_server.identity import SandboxIdentity, drop_privileges
from sandbox_server.limits import SandboxLimits
from sandbox_server.shell import LaunchError, ShellSession, parse_reported_cwd, shell_argv
from sandbox_server.workspace import WORKSPACE_MOUNT, Workspace

SANDBOX_UID = 1000
SANDBOX_HOSTNAME = "sandbox"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_ENV = {
    "PATH": SANDBOX_PATH,
    "HOME": WORKSPACE_MOUNT,
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "USER": "sandbox",
}
BWRAP_ENV: dict[str, str] = {}
"""bwrap's own environment, visible inside as ``/proc/1/environ``: deliberately empty."""

ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Top-level names that merged-/usr systems make symlinks into ``/usr`` (bound as-is otherwise)."""

ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "mime.types",
    "magic",
    "magic.mime",
    "protocols",
    "services",
    "inputrc",
    "terminfo",
    "python3",
    "python3.11",
)
"""Host ``/etc`` entries bound read-only when present: what a shell, libc and common tools read."""

PROC_READ_ONLY = ("sys", "irq", "bus", "fs")
"""``/proc`` directories bound read-only over themselves: the kernel's knobs."""
PROC_MASKED = (
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "sysrq-trigger",
    "kallsyms",
    "config.gz",
    "acpi",
    "asound",
    "scsi",
    "driver",
)
"""``/proc`` entries hidden behind ``/dev/null`` (files) or an empty read-only tmpfs (directories)."""

NOT_INSTALLED = (
    "bash is unavailable: bubblewrap (bwrap) is not installed on the sandbox host "
    "(Debian/Ubuntu package `bubblewrap`)."
)
_READ_CHUNK = 64 * 1024


def find_bwrap() -> str | None:
    """The ``bwrap`` executable on ``PATH`` (or in ``/usr/bin``), if installed."""
    found = shutil.which("bwrap")
    if found:
        return found
    return "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None


@cache
def _root_entries() -> tuple[tuple[str, str | None], ...]:
    """``(name, symlink target or None)`` for each of ``ROOT_LINKS`` present on the host."""
    entries: list[tuple[str, str | None]] = []
    for name in ROOT_LINKS:
        path = Path("/", name)
        if path.is_symlink():
            entries.append((name, os.readlink(path)))
        elif path.is_dir():
            entries.append((name, None))
    return tuple(entries)


@cache
def _proc_entries() -> tuple[list[str], list[str], list[str]]:
    """``(read-only dirs, masked files, masked dirs)`` among ``PROC_*`` that this kernel's ``/proc`` has."""
    read_only = [name for name in PROC_READ_ONLY if os.path.isdir(f"/proc/{name}")]
    files = [name for name in PROC_MASKED if os.path.isfile(f"/proc/{name}")]
    dirs = [name for name in PROC_MASKED if os.path.isdir(f"/proc/{name}")]
    return read_only, files, dirs


def proc_args() -> list[str]:
    """Mounts over the fresh ``/proc``: knobs read-only, sensitive entries masked."""
    read_only, files, dirs = _proc_entries()
    args: list[str] = []
    for name in read_only:
        args += ["--ro-bind", f"/proc/{name}", f"/proc/{name}"]
    for name in files:
        args += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    for name in dirs:
        args += ["--perms", "0555", "--tmpfs", f"/proc/{name}", "--remount-ro", f"/proc/{name}"]
    return args


def _generated_etc(uid: int) -> dict[str, str]:
    """``/etc`` files written for the sandbox rather than copied from the host (no host accounts leak)."""
    return {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{uid}:{uid}:sandbox:{WORKSPACE_MOUNT}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n",
        "hosts": f"127.0.0.1\tlocalhost {SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": f"{SANDBOX_HOSTNAME}\n",
    }


def etc_pipes(uid: int | None) -> dict[str, int]:
    """Read ends of pipes holding the generated ``/etc`` files, for ``--ro-bind-data`` (closed by the caller).

    Each file is far smaller than a pipe buffer, so it is written whole before
    bwrap starts and no temporary file ever exists on the host.
    """
    fds: dict[str, int] = {}
    try:
        for name, text in sorted(_generated_etc(uid or 0).items()):
            read_fd, write_fd = os.pipe()
            fds[name] = read_fd
            try:
                os.write(write_fd, text.encode())
            finally:
                os.close(write_fd)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def bwrap_argv(
    bwrap: str,
    *,
    workspace_fd: int,
    etc_fds: Mapping[str, int],
    limits: SandboxLimits,
    inner: Sequence[str],
    uid: int | None = SANDBOX_UID,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> list[str]:
    """The full ``bwrap`` command line for one sandboxed command (``inner``).

    Pure apart from looking at which of ``/bin``, ``/lib``... exist on the host,
    so the benchmark can time exactly what the server runs. ``workspace_fd`` is an
    ``O_PATH`` descriptor of the workspace (``open_workspace_fd``); ``etc_fds`` maps
    generated ``/etc`` file names to readable descriptors (``etc_pipes``).
    ``uid=None`` skips the user namespace (the command then runs as root without
    capabilities). ``extra_args`` (more mounts) follow the workspace bind and
    ``extra_env`` is set after the defaults: the egress proxy's additions.
    """
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if uid is not None:
        argv += ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(uid)]
    argv += ["--hostname", SANDBOX_HOSTNAME, "--ro-bind", "/usr", "/usr"]
    for name, target in _root_entries():
        if target is None:
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
        else:
            argv += ["--symlink", target, f"/{name}"]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name, fd in sorted(etc_fds.items()):
        argv += ["--perms", "0644", "--ro-bind-data", str(fd), f"/etc/{name}"]
    argv += [
        "--proc", "/proc",
        *proc_args(),
        "--dev", "/dev",
        "--size", str(limits.tmp_size), "--perms", "1777", "--tmpfs", "/tmp",
        "--bind-fd", str(workspace_fd), WORKSPACE_MOUNT,
        *extra_args,
        "--chdir", WORKSPACE_MOUNT,
        "--clearenv",
    ]  # fmt: skip
    for key, value in {**SANDBOX_ENV, **(extra_env or {})}.items():
        argv += ["--setenv", key, value]
    argv += ["--", *inner]
    return argv


def open_workspace_fd(root: Path) -> int:
    """An ``O_PATH`` descriptor of the workspace root for ``--bind-fd`` (the sandbox uid may not
    be able to walk the host path down to it, and the path must not show in bwrap's argv)."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def args_memfd(argv: Sequence[str]) -> int:
    """A memfd holding ``argv`` NUL-separated, for ``bwrap --args FD`` (no size limit, no file)."""
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    try:
        data = b"".join(os.fsencode(arg) + b"\0" for arg in argv)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class PreparedCommand:
    """A ``bwrap`` command line and the descriptors it refers to, which the child must inherit."""

    argv: list[str]
    pass_fds: tuple[int, ...]
    _owned: list[int] = field(default_factory=list)

    def close(self) -> None:
        """Close the descriptors this side still holds (call once the child is started)."""
        for fd in self._owned:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owned = []


def command_rlimits(limits: SandboxLimits, *, with_cgroup: bool) -> list[tuple[int, int]]:
    """``(resource, value)`` pairs applied to each command, clamped to the server's own hard limits."""
    wanted = [(resource.RLIMIT_FSIZE, limits.disk_quota), (resource.RLIMIT_CORE, 0)]
    if not with_cgroup:
        wanted += [(resource.RLIMIT_AS, limits.memory), (resource.RLIMIT_NPROC, limits.pids)]
    clamped: list[tuple[int, int]] = []
    for which, value in wanted:
        hard = resource.getrlimit(which)[1]
        clamped.append((which, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return clamped


def _pre_exec(
    group: CommandCgroup | None, rlimits: list[tuple[int, int]], identity: SandboxIdentity | None
) -> Callable[[], None]:
    """The hook run in the child between fork and exec: join the cgroup and lower the rlimits
    (both need the server's rights), then become the sandbox's unprivileged identity."""

    def hook() -> None:
        if group is not None:
            group.attach()
        for which, value in rlimits:
            resource.setrlimit(which, (value, value))
        if identity is not None:
            drop_privileges(identity)

    return hook


@dataclass
class _BwrapCommand:
    """One running ``bwrap``: output through its stdout pipe, final cwd through ``cwd_fd``."""

    process: asyncio.subprocess.Process
    cwd_fd: int
    group: CommandCgroup | None

    async def read(self) -> bytes:
        assert self.process.stdout is not None
        return await self.process.stdout.read(_READ_CHUNK)

    async def wait(self) -> int:
        return await self.process.wait()

    async def kill(self) -> None:
        # The session (start_new_session) holds the outer bwrap; killing it makes the
        # kernel kill the sandbox's pid 1 (--die-with-parent) and with it the namespace.
        if self.process.returncode is None:  # a reaped pid may already belong to someone else
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        if self.group is not None:
            self.group.kill_all()

    async def finish(self) -> Finished:
        try:
            cwd = parse_reported_cwd(_read_available(self.cwd_fd))
        finally:
            os.close(self.cwd_fd)
        memory = pids = False
        if self.group is not None:
            memory = self.group.memory_exceeded()
            pids = self.group.pids_exceeded()
            await self.group.remove()
        return Finished(cwd=cwd, memory_exceeded=memory, pids_exceeded=pids)


def _read_available(fd: int) -> bytes:
    """What is buffered in a pipe, without waiting for writers that might still hold it."""
    os.set_blocking(fd, False)
    data = b""
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 8192):
            data += chunk
            if len(data) > 65536:
                break
    return data


class BubblewrapBash(ShellSession):
    """``BashBackend`` running each command in a fresh bubblewrap sandbox over the workspace.

    Construction does no I/O beyond resolving the workspace: ``build_server`` makes
    one just to list tools. ``bwrap`` is looked up and the cgroup layout
    discovered on the first command.
    """

    def __init__(
        self,
        workspace: Path | Workspace,
        limits: SandboxLimits | None = None,
        *,
        bwrap: str | None = None,
        cgroups: CgroupFactory | None = None,
        uid: int | None = SANDBOX_UID,
        egress: EgressMount | None = None,
        identity: SandboxIdentity | None = None,
        bind_root: Path | None = None,
    ) -> None:
        super().__init__(workspace, limits)
        self._bind_root = bind_root
        """Where bwrap finds the workspace, if not at its root (``workspace_fs.stage``)."""
        self._bwrap = bwrap
        self._cgroups = cgroups if cgroups is not None else CgroupFactory()
        self._uid = uid
        self.egress = egress
        self.identity = identity
        """Host identity commands run as (``identity.identity_for``); None: the server's own."""
        self._fds: dict[str, int] = {}

    def prepare(self, inner: Sequence[str], extra_fds: Sequence[int] = ()) -> PreparedCommand:
        """The ``bwrap`` command line this backend runs for ``inner``, with its ``/etc`` pipes open.

        ``extra_fds`` are descriptors ``inner`` refers to (the cwd report pipe).
        The caller closes the result after starting the child.
        """
        bwrap = self._bwrap or find_bwrap()
        if bwrap is None:
            raise LaunchError(NOT_INSTALLED)
        self._bwrap = bwrap
        held = self._held_fds()
        fds = etc_pipes(self._uid)
        egress = self.egress
        try:
            argv = bwrap_argv(
                bwrap,
                workspace_fd=held["workspace"],
                etc_fds=fds,
                limits=self.limits,
                inner=inner,
                uid=self._uid,
                extra_args=egress.bwrap_args(held["egress"], held.get("bundle")) if egress else (),
                extra_env=egress.env if egress is not None else None,
            )
            split = argv.index("--")
            args_fd = args_memfd(argv[1:split])
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        owned = [*fds.values(), args_fd]
        return PreparedCommand(
            [bwrap, "--args", str(args_fd), *argv[split:]], (*owned, *held.values(), *extra_fds), owned
        )

    def _held_fds(self) -> dict[str, int]:
        """``O_PATH`` descriptors of what is bound from the host, opened once and kept."""
        if not self._fds:
            self._fds["workspace"] = open_workspace_fd(self._bind_root or self.workspace.root)
            if self.egress is not None:
                self._fds.update(self.egress.open_fds())
        return self._fds

    def close(self) -> None:
        """Release the descriptors of the host directories this backend binds."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _launch(self, cwd: str, command: str) -> _BwrapCommand:
        read_fd, write_fd = os.pipe()
        prepared: PreparedCommand | None = None
        try:
            if self.identity is not None and not self.identity.is_current:
                # The shell reopens /dev/fd/N, which checks the pipe's owner: make it the sandbox's.
                os.fchown(write_fd, self.identity.uid, self.identity.gid)
            prelude = self.egress.prelude if self.egress is not None else ""
            argv = shell_argv(cwd, command, f"/dev/fd/{write_fd}", prelude=prelude)
            prepared = self.prepare(argv, (write_fd,))
            process, group = await self._spawn(prepared)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            if prepared is not None:
                prepared.close()
        return _BwrapCommand(process, read_fd, group)

    async def _spawn(
        self, prepared: PreparedCommand
    ) -> tuple[asyncio.subprocess.Process, CommandCgroup | None]:
        """Start bwrap in a fresh cgroup; if joining it fails in the child, retry once with rlimits only."""
        group = self._cgroups.create(self.limits.memory, self.limits.pids)
        try:
            try:
                return await self._exec(prepared, group), group
            except subprocess.SubprocessError:
                if group is None:
                    raise
                self._cgroups.disable(f"joining {group.dirs[0].name} failed")
                await group.remove()
                group = None
                return await self._exec(prepared, None), None
        except (OSError, subprocess.SubprocessError) as exc:
            if group is not None:
                await group.remove()
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LaunchError(f"could not start the sandbox: {detail}") from exc
        finally:
            if group is not None:
                group.close_fds()

    async def _exec(
        self, prepared: PreparedCommand, group: CommandCgroup | None
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *prepared.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=prepared.pass_fds,
            env=BWRAP_ENV,
            start_new_session=True,
            preexec_fn=_pre_exec(
                group, command_rlimits(self.limits, with_cgroup=group is not None), self.identity
            ),
        )
