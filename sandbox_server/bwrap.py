"""The ``bash`` tool in bubblewrap: one ``bwrap`` process per command.

What the sandbox sees is its command line (``bwrap_args``). This module starts it and keeps
it bounded.

Identity (``identity``): the command's uid 1000 is an unprivileged host uid: the server's own,
or, when the server is root, one from the sandbox range that the child becomes before bwrap
starts (``drop_privileges``). The sandbox never holds host root or any host capability.

Network: none but loopback, unless the server runs an egress proxy (``sandbox_server.egress``):
then its directory is bound read-only into every command, the shell starts the in-sandbox
forwarder before the command, and the proxy and CA variables (and credential placeholders)
join the environment.

Limits: a per-command cgroup (``cgroups``) bounds memory and process count for the whole tree
and lists every process to kill; ``RLIMIT_FSIZE`` (the disk quota) and ``RLIMIT_CORE=0``
always apply; without cgroups, ``RLIMIT_AS``/``RLIMIT_NPROC`` stand in. Lifetime:
``--die-with-parent`` plus the pid namespace mean that when the command's shell exits, or the
server kills bwrap, every process of the command dies too; nothing outlives its call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sandbox_server.bwrap_args import (
    BWRAP_ENV,
    SANDBOX_UID,
    args_memfd,
    bwrap_argv,
    etc_pipes,
    find_bwrap,
    memory_args,
    not_installed,
    open_workspace_fd,
    session_area_args,
    session_area_fd,
)
from sandbox_server.cgroups import CgroupFactory, CommandCgroup
from sandbox_server.egress.mount import EgressMount
from sandbox_server.execution import Finished
from sandbox_server.identity import SandboxIdentity, drop_privileges
from sandbox_server.limits import SandboxLimits
from sandbox_server.memory_mounts import mount_fds as memory_mount_fds
from sandbox_server.shell import LaunchError, ShellSession, parse_reported_cwd, shell_argv
from sandbox_server.workspace import Workspace

_READ_CHUNK = 64 * 1024


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


def command_rlimits(limits: SandboxLimits, *, with_cgroup: bool, uid: int) -> list[tuple[int, int]]:
    """``(resource, value)`` pairs applied to each command (run as ``uid``), clamped to the
    server's own hard limits."""
    wanted = [(resource.RLIMIT_FSIZE, limits.disk_quota), (resource.RLIMIT_CORE, 0)]
    if not with_cgroup:
        # RLIMIT_NPROC counts every task of the user, the server's own threads and other
        # commands included: the command gets ``pids`` on top of what the user runs already.
        nproc = limits.pids + tasks_of_user(uid)
        wanted += [(resource.RLIMIT_AS, limits.memory), (resource.RLIMIT_NPROC, nproc)]
    clamped: list[tuple[int, int]] = []
    for which, value in wanted:
        hard = resource.getrlimit(which)[1]
        clamped.append((which, value if hard == resource.RLIM_INFINITY else min(value, hard)))
    return clamped


def tasks_of_user(uid: int) -> int:
    """Tasks (threads) of processes owned by ``uid`` now, as ``RLIMIT_NPROC`` counts them."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                total += len(os.listdir(f"/proc/{entry.name}/task"))
        except OSError:
            continue  # exited meanwhile
    return total


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
            raise LaunchError(not_installed())
        self._bwrap = bwrap
        held = self._held_fds()
        fds = etc_pipes(self._uid)
        egress = self.egress
        area = session_area_fd(held["workspace"])
        memory = memory_mount_fds(held["workspace"]) if area is not None else []
        mounted = [*([area] if area is not None else []), *(fd for _, _, fd in memory)]
        try:
            extra = egress.bwrap_args(held["egress"], held.get("bundle")) if egress else []
            areas = [*session_area_args(area), *memory_args(memory)] if area is not None else []
            argv = bwrap_argv(
                bwrap,
                workspace_fd=held["workspace"],
                etc_fds=fds,
                limits=self.limits,
                inner=inner,
                uid=self._uid,
                extra_args=[*extra, *areas],
                extra_env=egress.env if egress is not None else None,
            )
            split = argv.index("--")
            args_fd = args_memfd(argv[1:split])
        except BaseException:
            for fd in (*fds.values(), *mounted):
                os.close(fd)
            raise
        owned = [*fds.values(), args_fd, *mounted]
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
                group,
                command_rlimits(
                    self.limits,
                    with_cgroup=group is not None,
                    uid=os.getuid() if self.identity is None else self.identity.uid,
                ),
                self.identity,
            ),
        )
