"""``tether sessions tail``: follow a session's live event stream."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import anthropic

from gateway.commands.client import raw, run
from gateway.commands.events import all_events, describe_event, session_body
from gateway.commands.output import json_line, output_flags

STATUS_EVENTS = [
    "session.status_idle",
    "session.status_running",
    "session.status_rescheduled",
    "session.status_terminated",
]
RESTING = ("session.status_idle", "session.status_terminated")


def resting(client: anthropic.Anthropic, session_id: str) -> bool:
    """True when the session's latest status event says it is idle or terminated: it has run
    and nothing is under way (a session that never ran has no status yet, and is waited for)."""
    body = raw(
        client.beta.sessions.events.with_raw_response.list(
            session_id,
            limit=1,
            order="desc",
            types=STATUS_EVENTS,  # type: ignore[arg-type]
        )
    )
    data = body.get("data") or []
    return bool(data) and data[0]["type"] in RESTING


def print_event(args: argparse.Namespace, event: dict[str, Any]) -> None:
    if args.output == "json":
        json_line(event)
    elif args.output == "yaml":
        sys.stdout.write("---\n" + yaml.safe_dump(event, sort_keys=False, allow_unicode=True))
    else:
        sys.stdout.write(describe_event(event) + "\n")
    sys.stdout.flush()


def sessions_tail(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """Follow the live stream; ``--history`` prints the log so far first. A dropped stream
    reconnects with ``Last-Event-ID``, so no event is skipped or printed twice."""
    session_id = args.session_id
    session = session_body(client, session_id)  # fail fast (404) before printing anything
    seen: set[str] = set()
    last_id: str | None = None

    def emit(event: dict[str, Any]) -> bool:
        """Print once; True when tailing should stop."""
        nonlocal last_id
        last_id = event["id"]
        if event["id"] in seen:
            return False
        seen.add(event["id"])
        print_event(args, event)
        return bool(args.until_idle) and event["type"] in RESTING

    if args.history:
        stopping = False
        for event in all_events(client, session_id):
            stopping = emit(event)
        if stopping:  # the log so far ends idle: nothing further to wait for
            return 0
    if args.until_idle and session.get("status") == "terminated":
        print(f"{session_id} is terminated", file=sys.stderr)
        return 0
    for attempt in range(args.reconnects + 1):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        with client.beta.sessions.events.stream(session_id, extra_headers=headers) as stream:
            if args.history and last_id is None:
                # The log was empty when read: read it again now the stream is open, so an
                # event appended in between is not lost.
                for event in all_events(client, session_id):
                    emit(event)
            if args.until_idle and attempt == 0 and resting(client, session_id):
                print(
                    f"{session_id} is already {session_body(client, session_id)['status']}", file=sys.stderr
                )
                return 0
            print(f"following {session_id} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            for item in stream:
                if emit(item.to_dict(mode="json")):
                    return 0
        print(f"stream closed; reconnecting ({attempt + 1}/{args.reconnects})", file=sys.stderr, flush=True)
    return 1


def add_tail(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    tail = sub.add_parser("tail", help="follow a session's events as they happen")
    tail.add_argument("session_id", help="the session's id")
    tail.add_argument("--history", action="store_true", help="print the events so far first")
    tail.add_argument(
        "--until-idle",
        action="store_true",
        help="exit at the next idle or terminated status (at once if the session already rests)",
    )
    tail.add_argument("--reconnects", type=int, default=5, help="reconnect this often if the stream drops")
    output_flags(tail)
    tail.set_defaults(func=run(sessions_tail))
    return tail
