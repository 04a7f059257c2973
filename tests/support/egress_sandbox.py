"""``python -m tests.support.egress_sandbox``: ``tether sandbox`` with the egress flags.

The same server as ``tether sandbox`` (``sandbox_server.server.run``), with the
limit and egress flags, so the egress tests drive a real sandbox process over
MCP without depending on how the gateway's CLI wires the flags in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox_server.egress import add_egress_arguments, egress_from_args
from sandbox_server.limits import add_limit_arguments, limits_from_args
from sandbox_server.server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="egress-sandbox")
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    add_limit_arguments(parser)
    add_egress_arguments(parser)
    args = parser.parse_args(argv)
    try:
        limits, egress = limits_from_args(args), egress_from_args(args)
    except ValueError as exc:
        sys.exit(f"egress-sandbox: {exc}")
    run(Path(args.workspace), args.host, args.port, False, limits=limits, egress=egress)


if __name__ == "__main__":
    main()
