"""``python -m tunnel_agent ...``: the same as ``tether tunnel ...``."""

from __future__ import annotations

from tunnel_agent.cli import main

main()
