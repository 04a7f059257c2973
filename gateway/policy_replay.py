"""``tether policy dry-run``: what would a new policy have changed in a recorded session?

With ``--session`` the session's agent snapshot and its events come from a running
gateway through the official SDK; with ``--events`` from files.
"""

from __future__ import annotations

import argparse
from typing import Any

import anthropic

from policies.cli import dry_run


def _fetch(gateway: str, api_key: str, session_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with anthropic.Anthropic(base_url=gateway, api_key=api_key, max_retries=2) as client:
        session = client.beta.sessions.with_raw_response.retrieve(session_id).http_response.json()
        events: list[dict[str, Any]] = []
        page: str | None = None
        while True:
            query: dict[str, Any] = {"limit": 1000, **({"page": page} if page else {})}
            body = client.beta.sessions.events.with_raw_response.list(
                session_id, **query
            ).http_response.json()
            events += body["data"]
            page = body.get("next_page")
            if not page:
                return events, session["agent"]


def run_dry_run(args: argparse.Namespace) -> int:
    if args.session:
        if not args.api_key:
            print("tether policy dry-run: --api-key (or TETHER_API_KEY) is needed with --session")
            return 2
        events, agent = _fetch(args.gateway, args.api_key, args.session)
        return dry_run(args.files, events, agent)
    return dry_run(args.files, args.events, args.agent)
