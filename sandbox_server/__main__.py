"""``python -m sandbox_server``: the slim sandbox entry point, the command starters run.

Before anything else, a sandbox started for a parent (``launch.PARENT_ENV`` set) asks to die
with it (``launch.claim_parent``); then the command line is parsed (``cli``).
"""

from __future__ import annotations

from sandbox_server import cli, launch

launch.claim_parent()
cli.main()
