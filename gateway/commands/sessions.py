"""``tether sessions list|show|export|tail|create|update|archive|delete`` (``connect`` lives in
:mod:`gateway.commands.connect`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

from gateway.commands import connect
from gateway.commands.client import connection_flags, run
from gateway.commands.events import all_events, last_idle, session_body
from gateway.commands.output import (
    json_line,
    next_page,
    output_flags,
    page_flags,
    print_item,
    print_items,
    seconds,
)
from gateway.commands.resources import Flag, Resource, add_operations, collect

PROGRESS_EVERY = 1000
ATTENTION = "tether_attention"
STATUSES = ("idle", "running", "rescheduling", "terminated", "requires_action")

SESSIONS = Resource(
    name="sessions",
    noun="session",
    help="sessions",
    sdk=lambda client: client.beta.sessions,
    columns=[],
    flags=[
        Flag("--agent", "agent", "the agent's id"),
        Flag("--environment", "environment_id", "the environment's id"),
        Flag("--title", "title", "a title"),
        Flag("--vault", "vault_ids", "a vault whose credentials the session may use", kind="list"),
        Flag("--metadata", "metadata", "a metadata entry KEY=VALUE", kind="metadata"),
    ],
    update_flags=[
        Flag("--title", "title", "a new title"),
        Flag("--vault", "vault_ids", "the vaults the session may use (replaces the list)", kind="list"),
        Flag("--metadata", "metadata", "a metadata entry KEY=VALUE", kind="metadata"),
    ],
    required=["agent", "environment_id"],
)


def display_status(client: anthropic.Anthropic, session: dict[str, Any]) -> str:
    """``requires_action`` for an idle session waiting on a confirmation, else the status.

    The gateway's ``tether_attention`` says so directly; for a gateway without it, the
    ``stop_reason`` of the session's last idle event does."""
    if session.get("status") != "idle":
        return str(session.get("status"))
    if ATTENTION in session:
        return "requires_action" if session[ATTENTION] == "requires_action" else "idle"
    idle = last_idle(client, session["id"])
    reason = (idle or {}).get("stop_reason") or {}
    return "requires_action" if reason.get("type") == "requires_action" else "idle"


def sessions_list(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """Most recent first; every filter is the gateway's, so ``next_page`` resumes exactly.

    ``requires_action`` is not a session status on the wire: it is an idle session with
    ``tether_attention`` set, so ``--status requires_action`` alone asks for exactly that, and
    mixed with other statuses it counts as ``idle``."""
    query: dict[str, Any] = {}
    if args.agent:
        query["agent_id"] = args.agent
    if args.environment:
        query["environment_id"] = args.environment
    if args.status:
        query["status"] = sorted({"idle" if s == "requires_action" else s for s in args.status})
        if set(args.status) == {"requires_action"}:
            query["needs_attention"] = "true"
    if args.attention:
        query["needs_attention"] = "true"
    if args.search:
        query["q"] = args.search
    if args.include_archived:
        query["include_archived"] = True

    def fetch(q: dict[str, Any]) -> Any:
        return client.get("/v1/sessions", cast_to=object, options={"params": q})

    found, token = collect(fetch, query, args.limit, args.page)
    statuses = {s["id"]: display_status(client, s) for s in found}
    columns = [
        ("ID", lambda s: s["id"]),
        ("STATUS", lambda s: statuses[s["id"]]),
        ("AGENT", lambda s: (s.get("agent") or {}).get("name")),
        ("ENVIRONMENT", lambda s: s.get("environment_id")),
        ("TOKENS IN/OUT", _tokens),
        ("AGE", lambda s: seconds((s.get("stats") or {}).get("duration_seconds"))),
        ("TITLE", lambda s: s.get("title")),
    ]
    print_items(args, found, columns, "sessions")
    next_page(token)
    return 0


def _tokens(session: dict[str, Any]) -> str:
    usage = session.get("usage") or {}
    return f"{usage.get('input_tokens') or 0}/{usage.get('output_tokens') or 0}"


def _insights(client: anthropic.Anthropic, session_id: str) -> dict[str, Any] | None:
    import anthropic

    try:
        result: dict[str, Any] = client.get(f"/v1/tether/sessions/{session_id}/insights", cast_to=object)  # type: ignore[arg-type]
    except anthropic.NotFoundError:
        return None  # a gateway without the insights routes
    return result


def sessions_show(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """One session, with the four figures when the gateway serves them."""
    session = session_body(client, args.session_id)
    insight = _insights(client, args.session_id)
    if args.output != "table":
        print_item(args, {"session": session, "insights": insight})
        return 0
    agent = session.get("agent") or {}
    usage = session.get("usage") or {}
    model = agent.get("model")
    lines = [
        f"session   {session['id']}  ({display_status(client, session)})",
        f"title     {session.get('title') or '-'}",
        f"agent     {agent.get('name')} {agent.get('id')} v{agent.get('version')}  "
        f"model {model.get('id') if isinstance(model, dict) else model}",
        f"environment {session.get('environment_id')}",
        f"created   {session.get('created_at')}",
        f"tokens    {usage.get('input_tokens') or 0} in, {usage.get('output_tokens') or 0} out, "
        f"{usage.get('cache_read_input_tokens') or 0} cache read",
    ]
    if insight is not None:
        lines += _insight_lines(insight)
    print("\n".join(lines))
    return 0 if insight is None or (insight.get("integrity") or {}).get("ok", True) else 1


def _insight_lines(insight: dict[str, Any]) -> list[str]:
    corrections, recovery = insight["human_corrections"], insight["recovery"]
    integrity = insight.get("integrity") or {}
    broken = integrity.get("broken_at") or {}
    cost = insight.get("estimated_cost")
    lines = [
        f"events    {insight['events']} over {seconds(insight['duration_seconds'])}"
        f" (active {seconds(insight['active_seconds'])})",
        f"first useful output   {seconds(insight['time_to_first_useful_output_seconds'])}",
        f"human corrections     {corrections['total']} ({corrections['denials']} denied, "
        f"{corrections['interrupts']} interrupts, {corrections['follow_up_messages']} follow-ups)",
        f"recovery events       {recovery['total']} ({recovery['model_retries']} model retries, "
        f"{recovery['reschedules']} reschedules, {recovery['restarts_survived']} restarts survived)",
        "audit trail           "
        + (
            f"intact over {integrity.get('events')} events"
            if integrity.get("ok")
            else f"BROKEN at seq {broken.get('seq')} ({broken.get('event_id')}): {broken.get('reason')}"
        ),
    ]
    if cost:
        lines.append(f"cost (estimate)       ~${cost['usd']:.4f} at list prices for {cost['priced_as']}")
    return lines


def sessions_export(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """JSON lines: the session, then every event in log order (``tether policy dry-run --events``
    reads this); ``--format json`` writes one ``{"session": ..., "events": [...]}`` document."""
    session = session_body(client, args.session_id)
    out: IO[str] = open(args.file, "w", encoding="utf-8") if args.file else sys.stdout
    count = 0
    try:
        events: list[dict[str, Any]] = []
        if args.format == "jsonl":
            json_line(session, out)
        for event in all_events(client, args.session_id):
            if args.format == "jsonl":
                json_line(event, out)
            else:
                events.append(event)
            count += 1
            if count % PROGRESS_EVERY == 0:
                end = "\r" if sys.stderr.isatty() else "\n"
                sys.stderr.write(f"{args.session_id}: {count} events exported{end}")
        if args.format == "json":
            json.dump({"session": session, "events": events}, out, ensure_ascii=False)
            out.write("\n")
        out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    where = f" to {args.file}" if args.file else ""
    print(f"{args.session_id}: exported the session and {count} events{where}", file=sys.stderr)
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("sessions", help="list, inspect, follow, drive and export sessions")
    sub = parser.add_subparsers(dest="sessions_command", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", help="recent sessions with status, environment, tokens and age")
    page_flags(listing, default_limit=20)
    listing.add_argument("--agent", help="only this agent's sessions")
    listing.add_argument("--environment", help="only sessions in this environment")
    listing.add_argument(
        "--status",
        action="append",
        choices=STATUSES,
        help="only this status (repeatable; requires_action alone: idle and waiting for an operator)",
    )
    listing.add_argument(
        "--attention", action="store_true", help="only sessions waiting for a confirmation or in error"
    )
    listing.add_argument(
        "--search", help="only sessions with this text in their id, title or metadata values"
    )
    listing.add_argument("--include-archived", action="store_true", help="include archived sessions")
    listing.set_defaults(func=run(sessions_list))

    show = sub.add_parser("show", help="one session with its four figures")
    show.add_argument("session_id", help="the session's id")
    show.set_defaults(func=run(sessions_show))

    from gateway.commands.tail import add_tail

    tail = add_tail(sub)

    export = sub.add_parser("export", help="the session and every event, as JSON lines")
    export.add_argument("session_id", help="the session's id")
    export.add_argument("--file", "--to", dest="file", help="write here instead of standard output")
    export.add_argument(
        "--format",
        choices=("jsonl", "json"),
        default="jsonl",
        help="JSON lines (default) or one JSON document",
    )
    export.set_defaults(func=run(sessions_export))

    for command in (listing, show):
        output_flags(command)
    for command in (listing, show, tail, export):
        connection_flags(command)
    connect.add_connect(sub)
    add_operations(sub, SESSIONS, only=("create", "update", "archive", "delete"))
