"""``python -m sandbox_server.started sandbox ARGS``: the entry point starters run (``launch.command``).

First the process asks to die with its starter (``launch.claim_parent``), then it is
``tether sandbox ARGS`` through the slim parser (``cli``), never importing the gateway.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sandbox_server import launch


def main(argv: Sequence[str]) -> None:
    launch.claim_parent()
    if list(argv[:1]) != ["sandbox"]:
        sys.exit("usage: python -m sandbox_server.started sandbox [tether sandbox flags]")
    from sandbox_server.cli import main as sandbox

    sandbox(list(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
