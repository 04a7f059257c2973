"""Choose the ``bash`` backend for ``tether sandbox --backend {bwrap,docker,auto}``.

``auto`` uses Docker only when an engine answers a ping, and bubblewrap
otherwise, so one command line works on a laptop with Docker and on a host
without it. An explicitly requested Docker backend that cannot work is an error
at start-up, with a message saying what is missing. Missing bubblewrap is not: the
file tools need no sandbox process (every path resolves beneath the workspace by the
kernel), so the server serves them, and ``bash`` answers each call with what to
install (``bwrap_args.not_installed``), running nothing; it finds bubblewrap on the
first call after it is installed. ``bash_notice`` is the one line a starter (the
gateway, ``tether demo``) shows for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from sandbox_server.bwrap import BubblewrapBash
from sandbox_server.bwrap_args import find_bwrap, install_command
from sandbox_server.docker_backend import DockerBash, DockerSettings
from sandbox_server.egress.mount import EgressMount
from sandbox_server.identity import SandboxIdentity
from sandbox_server.limits import SandboxLimits
from sandbox_server.shell import ShellSession

log = logging.getLogger("tether.sandbox")

BackendName = Literal["bwrap", "docker", "auto"]
BACKENDS: tuple[BackendName, ...] = ("bwrap", "docker", "auto")


class BackendUnavailable(Exception):
    """The requested backend cannot run on this host; the message says why."""


def _docker_from_env() -> Any:
    import docker

    return docker.from_env()


def _reachable_docker(factory: Callable[[], Any]) -> Any:
    """A Docker client whose engine answered a ping; ``BackendUnavailable`` otherwise."""
    try:
        client = factory()
        client.ping()
    except Exception as exc:
        raise BackendUnavailable(f"no Docker engine is reachable ({exc})") from exc
    return client


def resolve_backend(
    name: BackendName, *, egress: bool, docker_factory: Callable[[], Any] = _docker_from_env
) -> Literal["bwrap", "docker"]:
    """What ``auto`` stands for on this host: Docker when an engine answers and no egress proxy
    is wanted (egress is only wired into bubblewrap), bubblewrap otherwise."""
    if name != "auto":
        return name
    if egress:
        return "bwrap"
    try:
        _reachable_docker(docker_factory)
    except BackendUnavailable:
        return "bwrap"
    return "docker"


def make_bash_backend(
    name: BackendName,
    workspace: Path,
    limits: SandboxLimits,
    *,
    docker_settings: DockerSettings | None = None,
    docker_factory: Callable[[], Any] = _docker_from_env,
    bwrap: str | None = None,
    egress: EgressMount | None = None,
    identity: SandboxIdentity | None = None,
    bind_root: Path | None = None,
) -> ShellSession:
    """The backend called ``name`` for ``workspace``; ``docker_factory`` makes the Docker client.

    ``egress`` (the proxy's mount) is only wired into bubblewrap: ``auto`` then
    skips Docker, and an explicit ``docker`` is refused rather than silently
    run without the network the sandbox was configured with.
    """
    if egress is not None and name == "docker":
        raise BackendUnavailable(
            "egress (--egress limited|unrestricted) is only supported on the bwrap backend"
        )
    if name == "docker" or (name == "auto" and egress is None):
        try:
            client = _reachable_docker(docker_factory)
        except BackendUnavailable:
            if name == "docker":
                raise
            log.info("no Docker engine reachable; using bubblewrap")
        else:
            return DockerBash(workspace, limits, client=client, settings=docker_settings)
    # Without bubblewrap the backend is still made: it looks for bwrap at every command and,
    # while there is none, answers with what to install instead of running anything.
    return BubblewrapBash(
        workspace, limits, bwrap=bwrap or find_bwrap(), egress=egress, identity=identity, bind_root=bind_root
    )


def backend_in(args: Sequence[str]) -> BackendName:
    """The ``--backend`` a ``tether sandbox`` command line selects (``bwrap`` unless it says)."""
    chosen = "bwrap"
    for index, arg in enumerate(args):
        if arg == "--backend" and index + 1 < len(args):
            chosen = args[index + 1]
        elif arg.startswith("--backend="):
            chosen = arg.split("=", 1)[1]
    return chosen if chosen in BACKENDS else "bwrap"  # type: ignore[return-value]


def bash_notice(sandbox_args: Sequence[str], bwrap: Callable[[], str | None] = find_bwrap) -> str | None:
    """One line for whoever starts sandboxes with ``sandbox_args`` when their ``bash`` cannot
    run on this host (bubblewrap missing); None when it can, or Docker was asked for."""
    backend = backend_in(sandbox_args)
    if backend == "docker" or bwrap() is not None:
        return None
    alternative = " (or a reachable Docker engine)" if backend == "auto" else ""
    return (
        f"bubblewrap (bwrap) is not installed: sandboxes serve the file tools (read, write, edit, "
        f"glob, grep) and bash answers with an error until it is{alternative}; "
        f"install it with `{install_command()}`"
    )
