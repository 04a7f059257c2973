"""The ``tether`` client commands: every resource of a running gateway, through the official
``anthropic`` SDK (``--gateway``/``TETHER_URL``, ``--api-key``/``TETHER_API_KEY``)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the client commands to the ``tether`` command's subparsers."""
    from gateway.commands import agents, catalog, keys, sessions

    sessions.register(commands)
    agents.register(commands)
    catalog.register_all(commands)
    keys.register(commands)
