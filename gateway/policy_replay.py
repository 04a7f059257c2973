"""``tether policy dry-run``: what would a new policy have changed in a recorded session?

With ``--session`` the session's agent snapshot and its events come from a running
gateway through the official SDK; with ``--events`` from files (a ``tether sessions
export``, JSON lines or one document). A gateway that cannot be reached or refuses the key
is one line with the fix, as for every client command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.commands.client import fail, guarded, make_client
from gateway.commands.events import all_events, session_body
from policies.cli import dry_run


def _fetch(gateway: str, api_key: str, session_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with make_client(gateway, api_key) as client:
        session = session_body(client, session_id)
        return list(all_events(client, session_id)), session["agent"]


def run_dry_run(args: argparse.Namespace) -> int:
    if args.session:
        if not args.api_key:
            return fail("an API key is needed with --session: pass --api-key or set TETHER_API_KEY")

        def fetched() -> int:
            events, agent = _fetch(args.gateway, args.api_key, args.session)
            sys.stdout.flush()
            return dry_run(args.files, events, agent)

        return guarded(args, fetched)
    return dry_run(args.files, args.events, args.agent)
