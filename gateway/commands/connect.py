"""``tether sessions connect SESSION``: drive a session from a terminal.

Streams the session's events and reads lines from stdin: plain text is sent as a
``user.message``; ``/approve [ID]`` and ``/deny [ID] [reason]`` answer a pending tool
confirmation (by default the only one); ``/interrupt`` stops the turn; ``/quit`` (or end of
input) leaves. Without a terminal it works line by line the same way, so it can be scripted.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

from gateway.commands.client import connection_flags, run
from gateway.commands.errors import describe
from gateway.commands.events import all_events, pending_confirmations, session_body
from gateway.commands.output import output_flags
from gateway.commands.tail import print_event

HELP = "text: send a message · /approve [ID] · /deny [ID] [reason] · /interrupt · /quit"
CONFIRMED = ("user.tool_confirmation", "agent.tool_result", "agent.mcp_tool_result")


class Console:
    """The shared state of the stream reader and the input loop."""

    def __init__(self, args: argparse.Namespace, client: anthropic.Anthropic) -> None:
        self.args = args
        self.client = client
        self.lock = threading.Lock()
        self.seen: set[str] = set()
        self.log: list[dict[str, Any]] = []
        self.last_id: str | None = None
        self.stopped = threading.Event()
        self.ready = threading.Event()
        """Set once the stream is open and the log so far is read."""

    def say(self, line: str) -> None:
        with self.lock:
            print(line, file=sys.stderr, flush=True)

    def take(self, event: dict[str, Any], live: bool = True) -> None:
        with self.lock:
            if event["id"] in self.seen:
                return
            self.seen.add(event["id"])
            self.log.append(event)
            self.last_id = event["id"]
            if live or self.args.history:
                print_event(self.args, event)
        if live and event.get("type") == "session.status_idle":
            self.announce()

    def announce(self) -> None:
        """Say which calls wait for a confirmation, if any."""
        if waiting := self.pending():
            self.say(
                "waiting for confirmation: " + "; ".join(_use(u) for u in waiting) + " — /approve or /deny"
            )

    def pending(self) -> list[dict[str, Any]]:
        with self.lock:
            return pending_confirmations(self.log)

    def follow(self) -> None:
        """Stream events until stopped, reconnecting with ``Last-Event-ID`` when dropped."""
        session_id = self.args.session_id
        while not self.stopped.is_set():
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            try:
                with self.client.beta.sessions.events.stream(session_id, extra_headers=headers) as stream:
                    for event in all_events(self.client, session_id):  # what happened before the stream
                        self.take(event, live=False)
                    if not self.ready.is_set():
                        self.announce()
                    self.ready.set()
                    for item in stream:
                        self.take(item.to_dict(mode="json"))
                        if self.stopped.is_set():
                            return
            except Exception as exc:
                if self.stopped.is_set():
                    return
                self.say(f"tether: stream: {describe(exc, self.args.gateway) or exc}; reconnecting")
                self.ready.set()
                if self.stopped.wait(1.0):
                    return


def _use(event: dict[str, Any]) -> str:
    server = f"{event['mcp_server_name']}/" if event.get("mcp_server_name") else ""
    return f"{event['id']} {server}{event.get('name')}"


def command(console: Console, line: str) -> bool:
    """Act on one input line; False when the user leaves."""
    text = line.strip()
    if not text:
        return True
    word, _, rest = text.partition(" ")
    if word in ("/quit", "/exit"):
        return False
    if word == "/help":
        console.say(HELP)
        return True
    if word == "/interrupt":
        return _send(console, {"type": "user.interrupt"})
    if word in ("/approve", "/deny"):
        use_id, reason = _choose(console, rest.strip())
        if use_id is None:
            return True
        event: dict[str, Any] = {"type": "user.tool_confirmation", "tool_use_id": use_id}
        event["result"] = "allow" if word == "/approve" else "deny"
        if word == "/deny" and reason.strip():
            event["deny_message"] = reason.strip()
        return _send(console, event)
    if word.startswith("/") and not word.startswith("//"):
        console.say(f"unknown command {word}: {HELP}")
        return True
    message = text[1:] if text.startswith("//") else line.rstrip("\n")
    return _send(console, {"type": "user.message", "content": [{"type": "text", "text": message}]})


def _choose(console: Console, rest: str) -> tuple[str | None, str]:
    """The tool use named first in ``rest`` (an id), else the only pending one; and the rest."""
    first, _, after = rest.partition(" ")
    pending = [use["id"] for use in console.pending()]
    if first and (first in pending or first.startswith("sevt_")):
        return first, after.strip()
    if not pending:
        console.say("nothing is waiting for a confirmation")
        return None, ""
    if len(pending) > 1:
        console.say("several calls wait; name one: " + ", ".join(_use(u) for u in console.pending()))
        return None, ""
    return pending[0], rest


def _send(console: Console, event: dict[str, Any]) -> bool:
    try:
        console.client.beta.sessions.events.send(console.args.session_id, events=[event])  # type: ignore[list-item]
    except Exception as exc:
        message = describe(exc, console.args.gateway)
        if message is None:
            raise
        console.say(f"tether: {message}")
    return True


def sessions_connect(args: argparse.Namespace, client: anthropic.Anthropic) -> int:
    session = session_body(client, args.session_id)  # fail fast (404) before starting anything
    console = Console(args, client)
    reader = threading.Thread(target=console.follow, name="tether-connect-stream", daemon=True)
    reader.start()
    console.ready.wait(30)
    console.say(f"connected to {session['id']} ({session.get('status')}); {HELP}")
    for line in sys.stdin:
        if not command(console, line):
            break
    console.stopped.set()
    return 0


def add_connect(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    connect = sub.add_parser(
        "connect",
        help="follow a session and talk to it: send messages, approve or deny calls, interrupt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    connect.add_argument("session_id", help="the session's id")
    connect.add_argument("--history", action="store_true", help="print the events so far first")
    output_flags(connect)
    connection_flags(connect)
    connect.set_defaults(func=run(sessions_connect))
