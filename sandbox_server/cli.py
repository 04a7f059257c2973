"""The sandbox server's command line (``python -m sandbox_server``; ``tether sandbox`` is an alias).

Only ``sandbox_server`` and what serving needs are imported, never the gateway: a sandbox
process is one of many on a host, and each pays its own imports in memory and start time.
The server's modules are imported after the arguments are parsed, so ``--help`` stays cheap.

``--warm`` starts a process with nothing opened yet (see ``sandbox_server.warm``): it imports
what serving needs, then waits on stdin for its session's flags and tokens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sandbox_server.egress.config import add_egress_arguments, egress_from_args
from sandbox_server.limits import add_limit_arguments, limits_from_args

PROG = "tether sandbox"


def add_arguments(parser: argparse.ArgumentParser, *, warm: bool = True) -> None:
    """The server's flags, on ``parser`` (``tether sandbox``'s subparser or this module's own)."""
    parser.add_argument("--workspace", required=not warm, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--stdio", action="store_true", help="speak MCP over stdin/stdout")
    parser.add_argument(
        "--backend",
        choices=("bwrap", "docker", "auto"),
        default="bwrap",
        help="where bash runs: bubblewrap, a Docker container, or Docker if an engine answers (default bwrap)",
    )
    parser.add_argument("--docker-image", default="debian:bookworm-slim", help="image for --backend docker")
    if warm:
        parser.add_argument(
            "--warm",
            nargs="?",
            const="",
            default=None,
            metavar="ROOM",
            help="import, then wait for one JSON line on stdin with the session's flags (for starters; "
            "blanks in ROOM make space to show those flags in the command line)",
        )
        parser.add_argument(
            "--zygote",
            type=int,
            default=None,
            metavar="FD",
            help="with --warm: fork a warm sandbox per request on the socket FD (for starters)",
        )
    add_limit_arguments(parser)
    add_egress_arguments(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Serve a workspace's toolset as an MCP server.")
    add_arguments(parser)
    return parser


def run_from_args(args: argparse.Namespace) -> None:
    """Check the flags, then serve (``sandbox_server.server.run``)."""
    if not args.workspace:
        sys.exit(f"{PROG}: --workspace is required")
    try:
        limits = limits_from_args(args)
        egress = egress_from_args(args)
    except ValueError as exc:
        sys.exit(f"{PROG}: {exc}")
    from sandbox_server.docker_backend import DockerSettings
    from sandbox_server.server import run

    run(
        workspace=Path(args.workspace),
        host=args.host,
        port=args.port,
        stdio=args.stdio,
        limits=limits,
        backend=args.backend,
        docker_settings=DockerSettings(image=args.docker_image),
        egress=egress,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``[sandbox] FLAGS``: the word ``sandbox`` may come first, as in ``tether sandbox FLAGS``."""
    flags = list(sys.argv[1:] if argv is None else argv)
    if flags[:1] == ["sandbox"]:
        flags = flags[1:]
    parser = build_parser()
    args = parser.parse_args(flags)
    if args.warm is not None:
        from sandbox_server import warm

        if args.zygote is not None:
            from sandbox_server import zygote

            zygote.serve(args.zygote)  # returns in a forked child, a warm sandbox of its own
        args = parser.parse_args(warm.wait_for_session())
    run_from_args(args)
