"""A local ``tether sandbox`` process for one session the worker holds.

The sandbox serves the agent toolset for ``<workspaces>/<session id>`` on a loopback port
chosen by the OS; the worker exposes that port as a dynamic tunnel route. The address flags
come last on the command line, after the operator's ``--sandbox-args``, so no extra flag can
make a sandbox listen beyond loopback.

Each start gets a fresh bearer token (``sandbox_server.auth``) in the child's environment, which
is otherwise a short allow-list (``sandbox_server.launch``: never the agent's tunnel token or
API key). The token goes on the sandbox's route as an ``Authorization`` header the agent adds
on the last hop (``headers``), so the gateway never learns it. The sandbox dies with the agent
(``PR_SET_PDEATHSIG``), and a start cancelled at any point kills and reaps its child.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.abc
import anyio.to_thread

from sandbox_server import auth, launch, workspace_fs

log = logging.getLogger("tether.tunnel.sandbox")

STOP_GRACE = 5.0


class SandboxStartFailed(Exception):
    """The message is shown to the gateway (work item metadata): it names no secret."""


def sandbox_command(workspace: Path, extra_args: Sequence[str]) -> list[str]:
    return launch.command([*extra_args, "--workspace", str(workspace), "--host", "127.0.0.1", "--port", "0"])


@dataclass
class LocalSandbox:
    process: anyio.abc.Process
    port: int
    token: str = field(repr=False)
    workspace: Path | None = None

    @property
    def headers(self) -> dict[str, str]:
        """What the sandbox's route adds to every request: its bearer token."""
        return auth.bearer_headers(self.token)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    @classmethod
    async def start(
        cls,
        workspace: Path,
        extra_args: Sequence[str],
        tasks: anyio.abc.TaskGroup,
        timeout: float = 30.0,
    ) -> LocalSandbox:
        """Start the process and wait for its ``listening on URL`` line; its remaining output
        is drained by a task in ``tasks`` so a chatty sandbox never blocks on a full pipe."""
        await anyio.to_thread.run_sync(lambda: workspace.mkdir(parents=True, exist_ok=True))
        token = auth.new_token()
        # Shielded: once spawned, the child must be known here, whatever is cancelled meanwhile.
        with anyio.CancelScope(shield=True):
            process = await anyio.open_process(
                sandbox_command(workspace, extra_args),
                stdin=subprocess.DEVNULL,
                stderr=None,
                env=launch.environment(token),
            )
        try:
            url = await launch.ready_url(process, timeout)
            port = urlsplit(url).port if url is not None else None
        except BaseException:
            await launch.stop(process, STOP_GRACE)
            raise
        if port is None:
            code = process.returncode
            await launch.stop(process, STOP_GRACE)
            detail = f"exited with status {code}" if code is not None else f"not ready in {timeout:g}s"
            raise SandboxStartFailed(f"the sandbox did not start ({detail}); see the agent's log")
        tasks.start_soon(launch.drain, process, name=f"sandbox {process.pid} output")
        log.info("sandbox for %s on 127.0.0.1:%d (pid %d)", workspace.name, port, process.pid)
        return cls(process, port, token, workspace)

    async def stop(self) -> None:
        """Stop the process, then unmount its workspace (as root, a filesystem image: loop devices
        are the host's); the next sandbox for the session mounts it again."""
        await launch.stop(self.process, STOP_GRACE)
        if self.workspace is not None:
            await anyio.to_thread.run_sync(workspace_fs.detach, self.workspace)
