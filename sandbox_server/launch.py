"""Starting a ``tether sandbox`` for someone else: its command line and its environment.

``python -m sandbox_server.started sandbox ARGS`` (``command``) is ``tether sandbox ARGS`` that
dies with the process that started it; like ``python -m sandbox_server`` it imports only the
sandbox server, never the gateway. The starter puts its own pid in the child's environment
(``PARENT_ENV``); before anything else, the child asks the kernel for ``SIGKILL`` when its
parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that its parent is still that pid: a
parent that died before the request was made would never trigger it, and the child exits
instead. The signal is tied to the *thread* that forked the child, so starters spawn from
their event loop thread (``anyio.open_process`` does), which lives as long as the process.

The child gets a minimal environment (``environment``): an allow-list of what a sandbox server
needs, never the starter's API keys, model key or master key.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Mapping, Sequence

import anyio
import anyio.abc

from sandbox_server.auth import TOKEN_ENV
from sandbox_server.serving import READY_PREFIX

PARENT_ENV = "TETHER_SANDBOX_PARENT"
_PR_SET_PDEATHSIG = 1
STARTED_MODULE = "sandbox_server.started"
"""The entry point ``command`` runs (kept apart so this module never imports the server)."""
_EGRESS_TOKEN_ENV = "TETHER_EGRESS_TOKEN"  # ``sandbox_server.egress.TOKEN_ENV``, without importing the proxy

PASSED_THROUGH = frozenset(
    {
        "PATH",
        "LANG",
        "LC_ALL",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "PYTHONUNBUFFERED",
        # Read by the sandbox server itself.
        "TETHER_PRIVATE_MOUNTS",  # sandbox_server.workspace_fs.PRIVATE_MOUNTS_ENV
        "TETHER_SANDBOX_UIDS",  # sandbox_server.identity.UID_RANGE_ENV
        # Read by the Docker SDK for the docker backend.
        "DOCKER_HOST",
        "DOCKER_TLS_VERIFY",
        "DOCKER_CERT_PATH",
    }
)
"""Variables copied from the starter's environment when set there."""
PER_START = frozenset({TOKEN_ENV, _EGRESS_TOKEN_ENV})
"""Variables the starter sets for one start (the tokens)."""
NEVER = frozenset(
    {"TETHER_API_KEYS", "TETHER_API_KEY", "TETHER_MASTER_KEY", "ANTHROPIC_API_KEY", "TETHER_TUNNEL_TOKEN"}
)


def command(args: Sequence[str]) -> list[str]:
    """The command line of ``tether sandbox ARGS`` started through this module: as slim as
    ``python -m sandbox_server`` (``started`` hands over to the same ``sandbox_server.cli``), and
    named as sandboxes always were, so ``ps`` and the tools that find a session's sandbox by
    its command line (``sandbox_server.started sandbox ... --workspace PATH``) still do."""
    return [sys.executable, "-m", STARTED_MODULE, "sandbox", *args]


def warm_command(room: int) -> list[str]:
    """The command line of a warm sandbox, whose flags come at hand-over (``sandbox_server.warm``),
    with ``room`` blanks its title is rewritten into."""
    return command(["--warm=" + " " * room])


def zygote_command(room: int, control_fd: int) -> list[str]:
    """The command line of a sandbox template (``sandbox_server.zygote``) serving fork requests
    on the socket ``control_fd``; its children are warm sandboxes with ``room`` blanks to be
    retitled into."""
    return command(["--warm=" + " " * room, f"--zygote={control_fd}"])


def environment(
    token: str | None, extra: Mapping[str, str] | None = None, source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The child's whole environment: the allow-listed variables of ``source`` (``os.environ``),
    the sandbox token, this process as the parent to die with, and ``extra`` (per-start
    variables such as the egress token; anything not allow-listed is refused). A warm sandbox
    gets no token here (None): its tokens come with the hand-over."""
    source = os.environ if source is None else source
    env = {name: source[name] for name in PASSED_THROUGH if name in source}
    env.setdefault("PATH", os.defpath)
    env["PYTHONUNBUFFERED"] = "1"  # the ready line must not wait in a buffer
    for name, value in (extra or {}).items():
        if name not in PASSED_THROUGH | PER_START or name in NEVER:
            raise ValueError(f"{name} may not be passed to a sandbox server")
        env[name] = value
    if token is not None:
        env[TOKEN_ENV] = token
    env[PARENT_ENV] = str(os.getpid())
    return env


def die_with_parent(expected_parent: int) -> None:
    """Have the kernel SIGKILL this process when its parent dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        sys.exit(f"tether sandbox: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != expected_parent:
        # Reparented: the parent died before the request above, so it would never fire.
        os._exit(1)


_started_for_parent = False


def started_for_parent() -> bool:
    """Whether this process is a sandbox started through ``command`` by a starter (which reports
    host-wide conditions, such as missing bubblewrap, once in its own log)."""
    return _started_for_parent


def claim_parent() -> None:
    """In a sandbox started through ``command``: die with the starter, and remember it was started
    for one. First thing in the process, before any thread exists."""
    parent = os.environ.pop(PARENT_ENV, "")
    if parent:
        die_with_parent(int(parent))
        global _started_for_parent
        _started_for_parent = True


async def ready_url(process: anyio.abc.Process, timeout: float) -> str | None:
    """The URL from the child's ``listening on URL`` line; None if it exits or times out first."""
    assert process.stdout is not None
    buffered = b""
    with anyio.move_on_after(timeout):
        async for chunk in process.stdout:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
        await process.wait()
    return None


async def drain(process: anyio.abc.Process) -> None:
    """Keep reading the child's stdout so a chatty sandbox can never block on a full pipe."""
    assert process.stdout is not None
    try:
        async for _ in process.stdout:
            pass
    except (anyio.ClosedResourceError, anyio.BrokenResourceError):
        pass


async def stop(process: anyio.abc.Process, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds (at once when it is 0), wait and close.
    Shielded: a cancelled caller still leaves no process behind. A child that is already gone
    (asyncio raises ``ProcessLookupError`` once it has seen the exit) is simply waited for."""
    with anyio.CancelScope(shield=True):
        if process.returncode is None:
            if grace > 0:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                with anyio.move_on_after(grace):
                    await process.wait()
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await process.aclose()
