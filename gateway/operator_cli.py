"""``tether sessions list|show|tail|export`` and ``tether agents list|show``: a running
gateway, seen from an operator's terminal.

Everything goes through the official ``anthropic`` SDK, exactly as any client would, so
these commands work against any Tether gateway (``--gateway``/``TETHER_URL``, key from
``--api-key``/``TETHER_API_KEY``). Exports write the gateway's JSON unchanged (raw
responses, not re-serialised SDK models), so nothing Tether adds to an event is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import IO, Any

import anthropic

DEFAULT_GATEWAY = "http://127.0.0.1:8420"
EVENT_PAGE = 1000
PROGRESS_EVERY = 1000

Handler = Callable[[argparse.Namespace, anthropic.Anthropic], int]


# Plumbing ------------------------------------------------------------------------------------


def _environ(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


@contextmanager
def _client(args: argparse.Namespace) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=args.gateway, api_key=args.api_key, max_retries=2, timeout=60
    ) as client:
        yield client


def _run(handler: Handler) -> Callable[[argparse.Namespace], None]:
    """Wrap a handler as an argparse ``func``: SDK errors become one line and exit status 1."""

    def run(args: argparse.Namespace) -> None:
        if not args.api_key:
            sys.exit("tether: an API key is needed: --api-key or TETHER_API_KEY")
        try:
            with _client(args) as client:
                status = handler(args, client)
        except anthropic.APIStatusError as exc:
            sys.exit(f"tether: {args.gateway} answered HTTP {exc.status_code}: {_error_message(exc)}")
        except anthropic.APIConnectionError as exc:
            sys.exit(f"tether: cannot reach the gateway at {args.gateway}: {exc}")
        except KeyboardInterrupt:
            status = 130
        except BrokenPipeError:
            status = 0  # `tether sessions export ... | head` is fine
        sys.exit(status)

    return run


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
    return str(exc.message)


def _json_line(value: Any, out: IO[str]) -> None:
    out.write(json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n")


def _raw(response: Any) -> Any:
    return response.http_response.json()


def _collect(
    list_raw: Callable[..., Any],
    query: dict[str, Any],
    limit: int,
    keep: Callable[[dict[str, Any]], bool] = lambda _item: True,
) -> list[dict[str, Any]]:
    """Follow ``next_page`` until ``limit`` kept items (raw JSON, as the API returned them)."""
    found: list[dict[str, Any]] = []
    while len(found) < limit:
        body = _raw(list_raw(**query))
        found += [item for item in body["data"] if keep(item)]
        query["page"] = body.get("next_page")
        if not query["page"]:
            break
    return found[:limit]


def _session(client: anthropic.Anthropic, session_id: str) -> dict[str, Any]:
    result: dict[str, Any] = _raw(client.beta.sessions.with_raw_response.retrieve(session_id))
    return result


def _events(client: anthropic.Anthropic, session_id: str) -> Iterator[dict[str, Any]]:
    """Every event of the session, oldest first, page by page (raw wire JSON)."""
    page: str | None = None
    while True:
        query: dict[str, Any] = {"limit": EVENT_PAGE}
        if page:
            query["page"] = page
        body = _raw(client.beta.sessions.events.with_raw_response.list(session_id, **query))
        yield from body["data"]
        page = body.get("next_page")
        if not page:
            return


def _insights(client: anthropic.Anthropic, session_id: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = client.get(f"/v1/tether/sessions/{session_id}/insights", cast_to=object)  # type: ignore[arg-type]
    except anthropic.NotFoundError:
        return None  # a gateway without the insights routes
    return result


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{int(value // 60)}m{int(value % 60):02d}s"
    return f"{value / 3600:.1f}h"


def _clock(stamp: str | None) -> str:
    if not stamp:
        return ""
    try:
        return datetime.fromisoformat(stamp).strftime("%H:%M:%S.%f")[:-3]
    except ValueError:
        return stamp


def _table(rows: Sequence[Sequence[str]], out: IO[str]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        )


def _model_id(agent: dict[str, Any]) -> str:
    model = agent.get("model")
    return str(model.get("id") if isinstance(model, dict) else model or "")


# Sessions ------------------------------------------------------------------------------------


def sessions_list(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """Most recent sessions first: status, tokens, duration."""
    query: dict[str, Any] = {"limit": min(args.limit, 100)}
    if args.agent:
        query["agent_id"] = args.agent
    if args.include_archived:
        query["include_archived"] = True
    found = _collect(
        client.beta.sessions.with_raw_response.list,
        query,
        args.limit,
        lambda s: not args.status or s["status"] in args.status,
    )
    if args.json:
        for session in found:
            _json_line(session, sys.stdout)
        return 0
    if not found:
        print("no sessions")
        return 0
    rows = [["ID", "STATUS", "AGENT", "TOKENS IN/OUT", "AGE", "TITLE"]]
    for session in found:
        usage = session.get("usage") or {}
        rows.append(
            [
                session["id"],
                session["status"],
                (session.get("agent") or {}).get("name") or "",
                f"{usage.get('input_tokens') or 0}/{usage.get('output_tokens') or 0}",
                _seconds((session.get("stats") or {}).get("duration_seconds")),
                session.get("title") or "",
            ]
        )
    _table(rows, sys.stdout)
    return 0


def sessions_show(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """One session, with the four figures when the gateway serves them."""
    session = _session(client, args.session_id)
    insight = _insights(client, args.session_id)
    if args.json:
        _json_line({"session": session, "insights": insight}, sys.stdout)
        return 0
    agent = session.get("agent") or {}
    usage = session.get("usage") or {}
    lines = [
        f"session   {session['id']}  ({session['status']})",
        f"title     {session.get('title') or '-'}",
        f"agent     {agent.get('name')} {agent.get('id')} v{agent.get('version')}  model {_model_id(agent)}",
        f"created   {session.get('created_at')}",
        f"tokens    {usage.get('input_tokens') or 0} in, {usage.get('output_tokens') or 0} out, "
        f"{usage.get('cache_read_input_tokens') or 0} cache read",
    ]
    if insight is not None:
        corrections, recovery = insight["human_corrections"], insight["recovery"]
        integrity = insight.get("integrity") or {}
        cost = insight.get("estimated_cost")
        broken = integrity.get("broken_at") or {}
        lines += [
            f"events    {insight['events']} over {_seconds(insight['duration_seconds'])}"
            f" (active {_seconds(insight['active_seconds'])})",
            f"first useful output   {_seconds(insight['time_to_first_useful_output_seconds'])}",
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
    print("\n".join(lines))
    return 0 if insight is None or (insight.get("integrity") or {}).get("ok", True) else 1


def sessions_export(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """JSON lines: the session, then every event in log order. ``--format json`` writes one
    ``{"session": ..., "events": [...]}`` document instead (what ``tether policy dry-run
    --events`` reads)."""
    out: IO[str] = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    progress = _Progress(sys.stderr, args.session_id)
    try:
        session = _session(client, args.session_id)
        if args.format == "json":
            events = []
            for event in _events(client, args.session_id):
                events.append(event)
                progress.tick()
            json.dump({"session": session, "events": events}, out, ensure_ascii=False)
            out.write("\n")
        else:
            _json_line(session, out)
            for event in _events(client, args.session_id):
                _json_line(event, out)
                progress.tick()
        out.flush()
    finally:
        if out is not sys.stdout:
            out.close()
    progress.done(args.output)
    return 0


class _Progress:
    """Progress on stderr: a self-rewriting line on a terminal, a line per thousand otherwise."""

    def __init__(self, stream: IO[str], session_id: str) -> None:
        self.stream = stream
        self.session_id = session_id
        self.count = 0
        self.tty = stream.isatty()

    def tick(self) -> None:
        self.count += 1
        if self.count % PROGRESS_EVERY == 0:
            end = "\r" if self.tty else "\n"
            self.stream.write(f"{self.session_id}: {self.count} events exported{end}")
            self.stream.flush()

    def done(self, output: str | None) -> None:
        where = f" to {output}" if output else ""
        self.stream.write(f"{self.session_id}: exported the session and {self.count} events{where}\n")
        self.stream.flush()


def sessions_tail(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    """Follow the live stream; ``--history`` prints the log so far first. A dropped stream
    reconnects with ``Last-Event-ID``, so no event is skipped or printed twice."""
    session_id = args.session_id
    _session(client, session_id)  # fail fast (404) before printing anything
    seen: set[str] = set()
    last_id: str | None = None

    def emit(event: dict[str, Any]) -> bool:
        """Print once; True when tailing should stop."""
        nonlocal last_id
        last_id = event["id"]
        if event["id"] in seen:
            return False
        seen.add(event["id"])
        if args.json:
            _json_line(event, sys.stdout)
        else:
            sys.stdout.write(describe_event(event) + "\n")
        sys.stdout.flush()
        return bool(args.until_idle) and event["type"] in ("session.status_idle", "session.status_terminated")

    if args.history:
        stopping = False
        for event in _events(client, session_id):
            stopping = emit(event)
        if stopping:  # the log so far ends idle: nothing further to wait for
            return 0
    for attempt in range(args.reconnects + 1):
        headers = {"Last-Event-ID": last_id} if last_id else {}
        with client.beta.sessions.events.stream(session_id, extra_headers=headers) as stream:
            print(f"following {session_id} (Ctrl-C to stop)", file=sys.stderr, flush=True)
            if args.history and last_id is None:
                # The log was empty when read: read it again now the stream is open, so an
                # event appended in between is not lost.
                for event in _events(client, session_id):
                    emit(event)
            for item in stream:
                event = item.to_dict(mode="json")
                if emit(event):
                    return 0
        print(f"stream closed; reconnecting ({attempt + 1}/{args.reconnects})", file=sys.stderr, flush=True)
    return 1


def describe_event(event: dict[str, Any]) -> str:
    """One line per event: time, type, and what matters about it."""
    kind = event.get("type", "?")
    detail = ""
    if kind in ("user.message", "agent.message"):
        detail = _text(event.get("content"))
    elif kind in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
        server = f"{event['mcp_server_name']}/" if event.get("mcp_server_name") else ""
        permission = event.get("evaluated_permission")
        rule = (event.get("tether_policy") or {}).get("rule")
        detail = f"{server}{event.get('name')} {json.dumps(event.get('input') or {}, ensure_ascii=False)}"
        if permission:
            detail += f"  [{permission}{' by ' + rule if rule else ''}]"
    elif kind in ("agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"):
        link = event.get("tool_use_id") or event.get("mcp_tool_use_id") or event.get("custom_tool_use_id")
        detail = f"{'ERROR ' if event.get('is_error') else ''}for {link}: {_text(event.get('content'))}"
    elif kind == "user.tool_confirmation":
        detail = (
            f"{event.get('result')} {event.get('tool_use_id')} {event.get('deny_message') or ''}".rstrip()
        )
    elif kind == "session.status_idle":
        reason = event.get("stop_reason") or {}
        detail = reason.get("type", "") + (f" {reason['event_ids']}" if reason.get("event_ids") else "")
    elif kind == "session.error":
        error = event.get("error") or {}
        detail = (
            f"{error.get('type')} ({(error.get('retry_status') or {}).get('type')}): {error.get('message')}"
        )
    elif kind == "span.model_request_end":
        usage = event.get("model_usage") or {}
        detail = f"{'ERROR ' if event.get('is_error') else ''}{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"
    line = f"{_clock(event.get('processed_at'))}  {kind:<26} {detail}".rstrip()
    return line if len(line) <= 300 else line[:299] + "…"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content.replace("\n", " ⏎ ")
    if isinstance(content, list):
        parts = [b.get("text", f"[{b.get('type')}]") for b in content if isinstance(b, dict)]
        return " ".join(parts).replace("\n", " ⏎ ")
    return ""


# Agents --------------------------------------------------------------------------------------


def agents_list(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    query: dict[str, Any] = {"limit": min(args.limit, 100)}
    if args.include_archived:
        query["include_archived"] = True
    found = _collect(client.beta.agents.with_raw_response.list, query, args.limit)
    if args.json:
        for agent in found:
            _json_line(agent, sys.stdout)
        return 0
    if not found:
        print("no agents")
        return 0
    rows = [["ID", "NAME", "VERSION", "MODEL", "TOOLS", "ARCHIVED"]]
    for agent in found:
        tools = ",".join(
            str(t.get("name") or t.get("mcp_server_name") or t.get("type")) for t in agent["tools"]
        )
        rows.append(
            [
                agent["id"],
                agent.get("name") or "",
                str(agent.get("version")),
                _model_id(agent),
                tools,
                "yes" if agent.get("archived_at") else "",
            ]
        )
    _table(rows, sys.stdout)
    return 0


def agents_show(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    query: dict[str, Any] = {"version": args.version} if args.version is not None else {}
    agent = _raw(client.beta.agents.with_raw_response.retrieve(args.agent_id, **query))
    print(json.dumps(agent, indent=2, ensure_ascii=False))
    return 0


# Parser --------------------------------------------------------------------------------------


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", default=_environ("TETHER_URL", DEFAULT_GATEWAY), help="gateway URL")
    parser.add_argument("--api-key", default=_environ("TETHER_API_KEY"), help="API key (or TETHER_API_KEY)")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``sessions`` and ``agents`` to the ``tether`` command's subparsers."""
    sessions = commands.add_parser("sessions", help="list, inspect, follow and export sessions")
    session_commands = sessions.add_subparsers(dest="sessions_command", required=True)

    listing = session_commands.add_parser("list", help="recent sessions with status, tokens and age")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--agent", help="only this agent's sessions")
    listing.add_argument(
        "--status", action="append", choices=("idle", "running", "rescheduling", "terminated")
    )
    listing.add_argument("--include-archived", action="store_true")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=_run(sessions_list))

    show = session_commands.add_parser("show", help="one session with its four figures")
    show.add_argument("session_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_run(sessions_show))

    tail = session_commands.add_parser("tail", help="follow a session's events as they happen")
    tail.add_argument("session_id")
    tail.add_argument("--history", action="store_true", help="print the events so far first")
    tail.add_argument("--until-idle", action="store_true", help="exit at the next idle status")
    tail.add_argument("--json", action="store_true", help="raw events, one JSON object per line")
    tail.add_argument("--reconnects", type=int, default=5, help="reconnect this often if the stream drops")
    tail.set_defaults(func=_run(sessions_tail))

    export = session_commands.add_parser("export", help="the session and every event, as JSON lines")
    export.add_argument("session_id")
    export.add_argument("-o", "--output", help="write here instead of standard output")
    export.add_argument("--format", choices=("jsonl", "json"), default="jsonl")
    export.set_defaults(func=_run(sessions_export))

    for parser in (listing, show, tail, export):
        _connection_flags(parser)

    agents = commands.add_parser("agents", help="list and inspect agents")
    agent_commands = agents.add_subparsers(dest="agents_command", required=True)
    agent_list = agent_commands.add_parser("list", help="agents with their latest version")
    agent_list.add_argument("--limit", type=int, default=50)
    agent_list.add_argument("--include-archived", action="store_true")
    agent_list.add_argument("--json", action="store_true")
    agent_list.set_defaults(func=_run(agents_list))
    agent_show = agent_commands.add_parser("show", help="one agent as JSON")
    agent_show.add_argument("agent_id")
    agent_show.add_argument("--version", type=int, help="a specific version")
    agent_show.set_defaults(func=_run(agents_show))
    for parser in (agent_list, agent_show):
        _connection_flags(parser)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m gateway.operator_cli sessions list ...`` (the same as ``tether sessions ...``)."""
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
