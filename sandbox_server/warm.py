"""A warm sandbox process: imported and waiting, bound to its workspace only at hand-over.

A starter (the gateway's ``SandboxPool``) keeps a few ``python -m sandbox_server --warm``
processes ahead of need, so a session's first tool call does not pay for an interpreter and
its imports. Such a process has opened nothing: no workspace, no socket, no egress proxy, no
token. It imports what serving needs (``preload``), says so (``WARM_LINE`` on stdout), then
reads one line on stdin, the
hand-over (``hand_over_line``): a JSON object with the session's flags (``args``, the same
flags a cold start gets on its command line) and its per-start variables (``env``: only the
tokens of ``launch.PER_START``). From there on it is the same process a cold start would be:
the same flags parsed the same way, the same ``server.run``. Its stdin is then swapped for
``/dev/null`` so nothing it starts inherits the starter's pipe, and its command line is
rewritten to show the session's flags (``retitle``). End of file before a
hand-over (the starter closed the pipe, or died) ends the process quietly.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sandbox_server.launch import PER_START

WARM_LINE = "warm"
"""Printed on stdout once the imports are done: the process is ready for a hand-over."""
ROOM = 4096
"""Blank bytes on a warm command line, rewritten with the session's flags at hand-over."""

PRELOADED = (
    "sandbox_server.server",
    "mcp.server.streamable_http_manager",
    "starlette.applications",
    "starlette.routing",
    "uvicorn",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
)
"""What every sandbox imports before it can serve; the egress proxy's TLS stack and the Docker
SDK are left to the sandboxes that need them."""


def hand_over_line(args: Sequence[str], env: Mapping[str, str]) -> bytes:
    """The line a starter writes to a warm process's stdin to make it a session's sandbox."""
    unknown = set(env) - PER_START
    if unknown:
        raise ValueError(f"{sorted(unknown)} may not be handed to a warm sandbox")
    return json.dumps({"args": list(args), "env": dict(env)}).encode() + b"\n"


def preload() -> None:
    for name in PRELOADED:
        importlib.import_module(name)


def wait_for_session() -> list[str]:
    """Preload, then block until the hand-over; returns the session's flags, its tokens set in
    ``os.environ`` (where the server pops them, as from a cold start's environment)."""
    preload()
    print(WARM_LINE, flush=True)
    line = sys.stdin.buffer.readline()
    if not line.strip():
        sys.exit(0)  # the starter closed the pipe: this process was never needed
    try:
        message = json.loads(line)
        args = [str(arg) for arg in message["args"]]
        env = {str(k): str(v) for k, v in dict(message.get("env") or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        sys.exit(f"tether sandbox: a malformed hand-over: {exc}")
    if set(env) - PER_START:
        sys.exit("tether sandbox: the hand-over may only carry the sandbox's tokens")
    if "--stdio" in args or "--warm" in args:
        sys.exit("tether sandbox: a warm sandbox serves over HTTP only")
    os.environ.update(env)
    _detach_stdin()
    retitle(args)
    return args


def retitle(args: Sequence[str]) -> None:
    """Show the session's flags in this process's command line, as a cold start's shows them
    (``ps``, and whoever finds a session's sandbox by its ``--workspace`` in ``/proc``).

    The warm command line ends with ``--warm=`` and ``ROOM`` blanks: the kernel shows the
    memory between ``arg_start`` and ``arg_end`` (``/proc/self/stat``), which is rewritten in
    place, NUL-separated and NUL-padded; flags that do not fit are left out of the title (never
    out of the server: it has parsed them already). The interpreter keeps its own copy of argv.
    """
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49: arg_start, arg_end
        shown = Path("/proc/self/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    warm = next((i for i, arg in enumerate(shown) if arg.startswith(b"--warm")), None)
    if warm is None or end <= start:
        return
    parts = [*shown[:warm], *(arg.encode() for arg in args)]
    title = b""
    for part in parts:
        if len(title) + len(part) + 1 > end - start:
            break
        title += part + b"\0"
    ctypes.memmove(start, title.ljust(end - start, b"\0"), end - start)


def _detach_stdin() -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
