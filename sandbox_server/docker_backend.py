"""The ``bash`` tool in a Docker container, for hosts where an engine is reachable.

Same semantics as the bubblewrap backend (``shell.ShellSession``): the working
directory carries over, background processes die with their command, the same
limits and messages. The shape differs: one long-lived container per session
(created on the first command, removed by ``close``) and one ``exec`` per command,
because starting a container per command costs far more than a ``bwrap``.

The container has no network (``network_mode="none"``), a read-only root file
system, a tmpfs ``/tmp``, the workspace bind-mounted at ``/workspace``, a non-root
user, no capabilities and ``no-new-privileges``, and the memory, process and file
size limits of ``SandboxLimits``; the kernel enforces those for the container as a
whole, which is one command at a time. The final working directory is written
to a file in ``/tmp`` and read back by a cleanup ``exec`` that also kills every
process the command left (``kill -KILL -1`` as the sandbox user spares only the
container's init and itself); a timeout runs the same kill.

The Docker client is passed in (``docker.from_env()`` in production), and the
container and exec settings are built by pure functions, so both can be tested
without an engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from sandbox_server.execution import Finished
from sandbox_server.limits import SandboxLimits
from sandbox_server.shell import LaunchError, ShellSession, parse_reported_cwd, shell_argv
from sandbox_server.workspace import WORKSPACE_MOUNT, Workspace

log = logging.getLogger("tether.sandbox")

DEFAULT_IMAGE = "debian:bookworm-slim"
CWD_REPORT = "/tmp/.tether-cwd"
CONTAINER_LABEL = "tether.sandbox"
SANDBOX_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": WORKSPACE_MOUNT,
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
CLEANUP_SCRIPT = 'cat -- "$1" 2>/dev/null; rm -f -- "$1"; kill -KILL -1 2>/dev/null; exit 0'
"""Print the reported cwd, then kill every process of the sandbox user except init and this shell."""


@dataclass(frozen=True)
class DockerSettings:
    image: str = DEFAULT_IMAGE
    user: str = "1000:1000"
    """Non-root user inside; the workspace must be writable by it on the host."""


def container_config(workspace: Path, limits: SandboxLimits, settings: DockerSettings) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.run`` creating the session's container."""
    from docker.types import Ulimit

    return {
        "image": settings.image,
        "command": ["sleep", "infinity"],
        "detach": True,
        "init": True,
        "user": settings.user,
        "working_dir": WORKSPACE_MOUNT,
        "environment": dict(SANDBOX_ENV),
        "hostname": "sandbox",
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={limits.tmp_size},mode=1777"},
        "volumes": {str(workspace): {"bind": WORKSPACE_MOUNT, "mode": "rw"}},
        "mem_limit": limits.memory,
        "memswap_limit": limits.memory,
        "pids_limit": limits.pids,
        "ulimits": [
            Ulimit(name="fsize", soft=limits.disk_quota, hard=limits.disk_quota),
            Ulimit(name="core", soft=0, hard=0),
        ],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "ipc_mode": "private",
        "labels": {CONTAINER_LABEL: "1"},
    }


def exec_config(cwd: str, command: str, settings: DockerSettings) -> dict[str, Any]:
    """Keyword arguments for ``client.api.exec_create`` running one command (the shared shell script)."""
    return {
        "cmd": shell_argv(cwd, command, CWD_REPORT),
        "stdout": True,
        "stderr": True,
        "stdin": False,
        "tty": False,
        "user": settings.user,
        "workdir": WORKSPACE_MOUNT,
        "environment": dict(SANDBOX_ENV),
    }


def cleanup_config(settings: DockerSettings) -> dict[str, Any]:
    """Keyword arguments for the ``exec`` that reads the cwd report and kills leftovers."""
    return {
        "cmd": ["sh", "-c", CLEANUP_SCRIPT, "tether-cleanup", CWD_REPORT],
        "stdout": True,
        "stderr": False,
        "user": settings.user,
    }


class _DockerCommand:
    """One ``exec``: a thread moves the output stream onto the event loop; ``kill`` runs the cleanup."""

    def __init__(self, backend: DockerBash, exec_id: str, stream: Iterator[bytes]) -> None:
        self._backend = backend
        self._exec_id = exec_id
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._ended = asyncio.Event()
        self._cleanup_output: bytes | None = None
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, args=(stream, loop), daemon=True).start()

    def _pump(self, stream: Iterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        try:
            for chunk in stream:
                if chunk:
                    loop.call_soon_threadsafe(self._chunks.put_nowait, chunk)
        except Exception as exc:
            log.debug("docker exec stream ended with %s", exc)
        finally:
            loop.call_soon_threadsafe(self._chunks.put_nowait, b"")
            loop.call_soon_threadsafe(self._ended.set)

    async def read(self) -> bytes:
        if self._ended.is_set() and self._chunks.empty():
            return b""
        return await self._chunks.get()

    async def wait(self) -> int:
        await self._ended.wait()
        info = await anyio.to_thread.run_sync(self._backend.client.api.exec_inspect, self._exec_id)
        code = info.get("ExitCode")
        return int(code) if code is not None else -9

    async def kill(self) -> None:
        await self._cleanup()

    async def finish(self) -> Finished:
        output = await self._cleanup()
        return Finished(cwd=parse_reported_cwd(output))

    async def _cleanup(self) -> bytes:
        if self._cleanup_output is None:
            self._cleanup_output = await anyio.to_thread.run_sync(self._backend.run_cleanup)
        return self._cleanup_output


class DockerBash(ShellSession):
    """``BashBackend`` running each command as an ``exec`` in the session's container."""

    def __init__(
        self,
        workspace: Path | Workspace,
        limits: SandboxLimits | None = None,
        *,
        client: Any,
        settings: DockerSettings | None = None,
    ) -> None:
        super().__init__(workspace, limits)
        self.client = client
        self.settings = settings or DockerSettings()
        self.container_id: str | None = None

    def _ensure_container(self) -> str:
        if self.container_id is None:
            container = self.client.containers.run(
                **container_config(self.workspace.root, self.limits, self.settings)
            )
            self.container_id = str(container.id)
        return self.container_id

    def _start_exec(self, cwd: str, command: str) -> tuple[str, Iterator[bytes]]:
        container = self._ensure_container()
        created = self.client.api.exec_create(container, **exec_config(cwd, command, self.settings))
        exec_id = str(created["Id"])
        return exec_id, self.client.api.exec_start(exec_id, stream=True, demux=False)

    def run_cleanup(self) -> bytes:
        """Blocking: read the cwd report and kill the command's leftovers (see ``CLEANUP_SCRIPT``)."""
        if self.container_id is None:
            return b""
        created = self.client.api.exec_create(self.container_id, **cleanup_config(self.settings))
        output = self.client.api.exec_start(str(created["Id"]), stream=False, demux=False)
        return bytes(output or b"")

    async def _launch(self, cwd: str, command: str) -> _DockerCommand:
        try:
            exec_id, stream = await anyio.to_thread.run_sync(self._start_exec, cwd, command)
        except Exception as exc:
            raise LaunchError(f"could not start the command in the Docker sandbox: {exc}") from exc
        return _DockerCommand(self, exec_id, stream)

    def close(self) -> None:
        """Remove the session's container (blocking); the workspace stays on the host."""
        if self.container_id is not None:
            with contextlib.suppress(Exception):
                self.client.containers.get(self.container_id).remove(force=True)
            self.container_id = None
