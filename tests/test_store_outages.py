"""The gateway rides out a store outage: it answers 503 with ``Retry-After`` instead of a 500 or
a hang, reports itself unready while the store cannot take writes, keeps its background loops
alive, and finishes every session's turn by itself once the store is back.

Each test runs a real gateway process against a database the test can break: SQLite held
write-locked by another connection, SQLite on a small filesystem filled to the last byte,
PostgreSQL (a cluster of the test's own) behind a TCP gate that cuts every connection, then
restarted for real. While the fault lasts, sessions are mid-turn (a scripted model that makes
each of several tool-calling steps wait for a ``retry-after``), clients follow their event
streams, and other clients keep creating sessions, sending messages, listing and retrieving.

Readiness (``GET /ready``) means "this gateway can take writes now": accepting a message and
running a session both need the store to commit, so a load balancer should stop sending work
to a gateway that would answer 503 to every POST. So ``/ready`` must answer 503 at least once
during every outage here, the SQLite write lock and the full disk included, although reads
keep working through both (SQLite readers never wait for a writer in WAL mode). Liveness
(``GET /health``) is 200 throughout: restarting the process would not fix its database.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NoReturn

import anthropic
import anyio
import httpx2
import pytest

from gateway.store import open_store
from gateway.store.chain import verify
from tests.conftest import Scripts
from tests.support.faults import TcpGate, fill, small_tmpfs, sqlite_write_lock_held, truncate_wal
from tests.support.pg_cluster import throwaway_cluster
from tests.support.processes import ServerProcess, running_server, start_server
from tests.support.restarts import shared_database_env
from tests.support.sessions import mcp_agent, send_and_stream, strictly_valid, user_message

HANG_BOUND = 10.0
"""The clients' timeout: a call with no answer by then hung."""
ANSWER_BOUND = 6.0
"""Every API answer, 2xx or 503, arrives within this, outage or not: the API answers at once
rather than wait for the store, and SQLite's busy wait (5 s) is the longest it may wait."""
READ_BOUND = 1.0
"""On SQLite the median read of each kind answers within this while the write lock is held: a
reader never waits for a writer (a few milliseconds normally). A read that queued behind the
writer would wait out the busy timeout (5 s) or answer 503; one slow read on a loaded machine
says nothing, so the bound is on the median (every read is still held to ``ANSWER_BOUND``)."""
RECOVERY_BOUND = 30.0
"""After the fault ends: ``/ready`` is 200 again, and every session has finished its turn."""
STREAM_IDLE = 3.0
"""A follower whose stream is silent this long reconnects with ``Last-Event-ID``."""
PACE = 0.1
"""Pause between two rounds of a client's calls (pacing, not synchronisation)."""
WRITE_PACE = 0.25
"""The writer's pause: each round starts a session's turn, so fewer of them."""

SLOW_SESSIONS = 3
"""Sessions mid-turn when the fault strikes, each followed by a streaming client."""
STEPS = 8
"""Tool calls in a slow session's turn; before each, the model answers 529 with a retry-after."""
STEP_PAUSE = 0.5

READS = ("list sessions", "retrieve session", "list events")
WRITES = ("create session", "send message")
PROBES = ("health", "ready")
REPORTED = 5
"""Problems of one kind quoted in a failure message (the rest are counted)."""


Window = tuple[float, float]
"""A span of ``time.monotonic()``: from, to."""


# What clients saw --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    op: str
    started: float
    """``time.monotonic()`` when the call was made."""
    elapsed: float
    status: int | None
    """None: no HTTP answer at all (timeout, connection refused or reset)."""
    retry_after: str | None = None
    body: Any = None
    error: str = ""

    def overlaps(self, window: Window) -> bool:
        """Whether the call was in flight at some moment of ``window``."""
        return self.started <= window[1] and self.started + self.elapsed >= window[0]

    def describe(self) -> str:
        what = f"HTTP {self.status}" if self.status is not None else self.error
        extra = f" retry-after={self.retry_after!r}" if self.retry_after is not None else ""
        return f"{self.op}: {what}{extra} after {self.elapsed:.1f}s body={str(self.body)[:200]}"


@dataclass
class Journal:
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def of(self, *ops: str) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.op in ops]


def _json(response: httpx2.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:500]


def _sdk(journal: Journal, op: str, call: Callable[[], Any]) -> Any | None:
    """Make one ``with_raw_response`` SDK call, record how it was answered, return the parsed body."""
    started = time.monotonic()
    try:
        raw = call()
    except anthropic.APIStatusError as exc:
        journal.add(
            Answer(
                op,
                started,
                time.monotonic() - started,
                exc.status_code,
                exc.response.headers.get("retry-after"),
                _json(exc.response),
            )
        )
        return None
    except anthropic.APIConnectionError as exc:  # timeouts included
        journal.add(
            Answer(op, started, time.monotonic() - started, None, error=f"{type(exc).__name__}: {exc}")
        )
        return None
    journal.add(Answer(op, started, time.monotonic() - started, raw.http_response.status_code))
    return raw.parse()


def _http(journal: Journal, client: httpx2.Client, op: str, path: str) -> Answer:
    started = time.monotonic()
    try:
        response = client.get(path)
    except httpx2.HTTPError as exc:
        answer = Answer(op, started, time.monotonic() - started, None, error=f"{type(exc).__name__}: {exc}")
    else:
        answer = Answer(
            op,
            started,
            time.monotonic() - started,
            response.status_code,
            response.headers.get("retry-after"),
            _json(response),
        )
    journal.add(answer)
    return answer


def _client(
    server: ServerProcess, api_key: str, timeout: float | httpx2.Timeout = HANG_BOUND
) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=timeout)


# Clients running through the fault ---------------------------------------------------------


@dataclass
class Traffic:
    """Clients that keep calling the API from threads until ``stop`` is set."""

    server: ServerProcess
    api_key: str
    agent_id: str
    environment_id: str
    known: list[str]
    """Sessions the readers retrieve and list events of."""
    journal: Journal = field(default_factory=Journal)
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: dict[str, str] = field(default_factory=dict)
    """Session id -> the text of the message the API accepted (2xx) for it."""
    created: list[str] = field(default_factory=list)

    def writer(self) -> None:
        """Create a session and send it one message, again and again."""
        client = _client(self.server, self.api_key)
        number = 0
        while not self.stop.is_set():
            number += 1
            session = _sdk(
                self.journal,
                "create session",
                lambda: client.beta.sessions.with_raw_response.create(
                    agent=self.agent_id, environment_id=self.environment_id
                ),
            )
            if session is not None:
                self.created.append(session.id)
                text = f"message {number} to {session.id}"
                sent = _sdk(
                    self.journal,
                    "send message",
                    partial(
                        client.beta.sessions.events.with_raw_response.send,
                        session.id,
                        events=[user_message(text)],  # type: ignore[list-item]
                    ),
                )
                if sent is not None:
                    self.accepted[session.id] = text
            self.stop.wait(WRITE_PACE)

    def reader(self) -> None:
        client = _client(self.server, self.api_key)
        while not self.stop.is_set():
            session_id = self.known[len(self.created) % len(self.known)]
            _sdk(self.journal, "list sessions", lambda: client.beta.sessions.with_raw_response.list(limit=10))
            _sdk(
                self.journal,
                "retrieve session",
                partial(client.beta.sessions.with_raw_response.retrieve, session_id),
            )
            _sdk(
                self.journal,
                "list events",
                partial(client.beta.sessions.events.with_raw_response.list, session_id, limit=100),
            )
            self.stop.wait(PACE)

    def prober(self) -> None:
        with httpx2.Client(base_url=self.server.url, timeout=HANG_BOUND) as http:
            while not self.stop.is_set():
                _http(self.journal, http, "health", "/health")
                _http(self.journal, http, "ready", "/ready")
                self.stop.wait(PACE)


@dataclass
class Follower:
    """A client following one session's event stream, reconnecting with ``Last-Event-ID``
    whenever the stream breaks, is refused, or stays silent for ``STREAM_IDLE``."""

    server: ServerProcess
    api_key: str
    session_id: str
    after_id: str
    """The last event already in the log when following began."""
    ids: list[str] = field(default_factory=list)
    journal: Journal = field(default_factory=Journal)
    final_id: str | None = None
    """Set once the session has settled: the follower stops after streaming this event."""
    stop: threading.Event = field(default_factory=threading.Event)

    def done(self) -> bool:
        last = self.ids[-1] if self.ids else self.after_id
        return self.stop.is_set() or (self.final_id is not None and last == self.final_id)

    def run(self) -> None:
        client = _client(self.server, self.api_key, httpx2.Timeout(HANG_BOUND, read=STREAM_IDLE))
        while not self.done():
            last = self.ids[-1] if self.ids else self.after_id
            started = time.monotonic()
            try:
                with client.beta.sessions.events.stream(
                    self.session_id, extra_headers={"Last-Event-ID": last}
                ) as stream:
                    self.journal.add(Answer("stream", started, time.monotonic() - started, 200))
                    for event in stream:
                        if event_id := getattr(event, "id", None):
                            self.ids.append(event_id)
                        if self.done():
                            return
            except anthropic.APIStatusError as exc:
                self.journal.add(
                    Answer(
                        "stream",
                        started,
                        time.monotonic() - started,
                        exc.status_code,
                        exc.response.headers.get("retry-after"),
                        _json(exc.response),
                    )
                )
                self.stop.wait(PACE)
            except (anthropic.APIConnectionError, httpx2.HTTPError):
                # A silent stream timing out, or one the gateway broke off: reconnect.
                self.stop.wait(PACE)


@contextmanager
def _running(
    targets: list[Callable[[], None]], stops: list[threading.Event]
) -> Iterator[list[threading.Thread]]:
    threads = [threading.Thread(target=target, daemon=True) for target in targets]
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        for stop in stops:
            stop.set()
        for thread in threads:
            thread.join(HANG_BOUND + STREAM_IDLE + 5)


# Polling with deadlines ----------------------------------------------------------------------


def _within(bound: float, condition: Callable[[], bool]) -> bool:
    """Poll ``condition`` until it holds (True) or ``bound`` seconds have passed (False)."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _eventually(what: str, condition: Callable[[], bool], bound: float) -> None:
    if not _within(bound, condition):
        raise AssertionError(f"not within {bound:.0f}s: {what}")


def _ready(server: ServerProcess) -> bool:
    try:
        return httpx2.get(server.url + "/ready", timeout=HANG_BOUND).status_code == 200
    except httpx2.HTTPError:
        return False


def _never_ok(journal: Journal) -> list[str]:
    """The kinds of call that have not answered 2xx yet."""
    return [op for op in (*READS, *WRITES, *PROBES) if not any(a.status == 200 for a in journal.of(op))]


def _all_events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    return client.beta.sessions.events.with_raw_response.list(session_id, limit=1000).http_response.json()[
        "data"
    ]


def _settled(events: list[dict[str, Any]]) -> bool:
    """Nothing left to do: no input, or the last input was followed by an idle status."""
    has_input = any(e["type"] == "user.message" for e in events)
    return not has_input or events[-1]["type"] == "session.status_idle"


def _at(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(event["processed_at"].replace("Z", "+00:00"))


# Checks ----------------------------------------------------------------------------------------


class Findings:
    """Problems gathered across every check, so one failing run reports all of them."""

    def __init__(self) -> None:
        self.problems: dict[str, list[str]] = {}

    def add(self, kind: str, detail: str) -> None:
        self.problems.setdefault(kind, []).append(detail)

    def report(self) -> str:
        lines = []
        for kind, details in self.problems.items():
            lines.append(f"- {kind} ({len(details)}x)")
            lines += [f"    {d}" for d in details[:REPORTED]]
        return "\n".join(lines)


def _unavailable_shape(answer: Answer) -> str | None:
    """Why a 503 is not the contract's (``Retry-After`` in integer seconds, an ``api_error``)."""
    if answer.retry_after is None or not re.fullmatch(r"\d+", answer.retry_after):
        return f"Retry-After is {answer.retry_after!r}, not integer seconds"
    body = answer.body
    if not (
        isinstance(body, dict)
        and body.get("type") == "error"
        and isinstance(body.get("error"), dict)
        and body["error"].get("type") == "api_error"
        and isinstance(body["error"].get("message"), str)
    ):
        return f"body is not an Anthropic api_error: {str(body)[:200]}"
    return None


def _check_api_answers(findings: Findings, answers: list[Answer], reads_stay_up: bool) -> None:
    """API calls (not the probes, see ``_check_probes``): 2xx, or a well-formed 503."""
    for answer in answers:
        if answer.op in PROBES:
            continue
        if answer.status is None:
            findings.add(f"{answer.op} got no HTTP answer (bound {HANG_BOUND:.0f}s)", answer.describe())
        elif answer.elapsed > ANSWER_BOUND:
            findings.add(f"{answer.op} answered only after more than {ANSWER_BOUND:.0f}s", answer.describe())
        elif 200 <= answer.status < 300:
            continue
        elif answer.status == 503 and reads_stay_up and answer.op in (*READS, "stream"):
            findings.add(f"{answer.op} answered 503 though SQLite readers never wait", answer.describe())
        elif answer.status == 503:
            if (shape := _unavailable_shape(answer)) is not None:
                findings.add(f"{answer.op}: malformed 503", f"{shape}; {answer.describe()}")
        else:
            findings.add(f"{answer.op} answered {answer.status}", answer.describe())


def _check_reads(findings: Findings, answers: list[Answer], window: Window) -> None:
    """Reads in flight during the fault did not wait for the writer (see ``READ_BOUND``)."""
    for op in (*READS, "stream"):
        during = sorted(a.elapsed for a in answers if a.op == op and a.overlaps(window))
        if during and (median := statistics.median(during)) > READ_BOUND:
            findings.add(
                f"{op} waited (median slower than {READ_BOUND:.0f}s) though SQLite readers never wait",
                f"{len(during)} calls during the fault; median {median:.2f}s, slowest {during[-1]:.2f}s",
            )


def _check_probes(findings: Findings, journal: Journal, window: Window) -> None:
    for answer in journal.of(*PROBES):
        if answer.elapsed > ANSWER_BOUND:
            findings.add(f"/{answer.op} answered only after more than {ANSWER_BOUND:.0f}s", answer.describe())
    for answer in journal.of("health"):
        if answer.status != 200:
            findings.add("/health was not 200", answer.describe())
    readiness = journal.of("ready")
    for answer in readiness:
        ready = answer.status == 200 and answer.body == {"status": "ready"}
        unready = (
            answer.status == 503
            and isinstance(answer.body, dict)
            and answer.body.get("status") == "unavailable"
        )
        if not (ready or unready):
            findings.add("/ready answered neither 200 ready nor 503 unavailable", answer.describe())
    during = [a for a in readiness if a.overlaps(window)]
    if not any(a.status == 503 for a in during):
        findings.add(
            "/ready never answered 503 during the outage",
            f"{len(during)} probes during it: {Counter(a.status for a in during)}",
        )


def _check_session(
    findings: Findings, session_id: str, events: list[dict[str, Any]], echo: bool, accepted: str | None
) -> None:
    ids = [e["id"] for e in events]
    if len(set(ids)) != len(ids):
        findings.add("duplicate event ids", f"{session_id}: {[i for i, n in Counter(ids).items() if n > 1]}")
    try:
        strictly_valid(events)
    except ValueError as exc:
        findings.add("events that do not validate against the SDK", f"{session_id}: {exc}"[:300])
    texts = [e["content"][0]["text"] for e in events if e["type"] == "user.message"]
    if accepted is not None and texts.count(accepted) != 1:
        findings.add("an accepted message is not in the log exactly once", f"{session_id}: {texts}")
    if not texts:
        return
    if not _settled(events):
        tail = [e["type"] for e in events[-5:]]
        findings.add("a session never finished its turn", f"{session_id}: log ends {tail}")
        return
    final = events[-1]
    if final.get("stop_reason", {}).get("type") != "end_turn":
        findings.add("a turn did not end with end_turn", f"{session_id}: {final.get('stop_reason')}")
    # Each message answered exactly once: one agent.message between it and the next message.
    answers: list[list[str]] = []
    for event in events:
        if event["type"] == "user.message":
            answers.append([])
        elif event["type"] == "agent.message" and answers:
            answers[-1].append(event["content"][0]["text"])
    for text, replies in zip(texts, answers, strict=True):
        expected = [f"echo: {text}"] if echo else None
        if len(replies) != 1 or (expected is not None and replies != expected):
            findings.add("a message not answered exactly once", f"{session_id}: {text!r} -> {replies}")
    errors = [
        e["error"]
        for e in events
        if e["type"] == "session.error" and e["error"]["retry_status"]["type"] != "retrying"
    ]
    if errors:
        findings.add("a session recorded a failure", f"{session_id}: {errors}")
    uses = [e["id"] for e in events if e["type"] == "agent.mcp_tool_use"]
    results = Counter(e["mcp_tool_use_id"] for e in events if e["type"] == "agent.mcp_tool_result")
    if any(results[use] != 1 for use in uses) or sum(results.values()) != len(uses):
        findings.add(
            "a tool call without exactly one result", f"{session_id}: uses {uses}, results {results}"
        )
    failed = [e["content"] for e in events if e["type"] == "agent.mcp_tool_result" and e.get("is_error")]
    if failed:
        # ``add`` never fails: an error result is a call the outage cost (abandoned, not waited out).
        findings.add("a tool call lost to the outage", f"{session_id}: {failed}")


def _check_chains(findings: Findings, database_url: str, counts: dict[str, int]) -> None:
    """Verify every session's hash chain the way ``tether audit verify`` does (it walks ``seq``
    from 1, so a gap breaks it), in one process rather than one CLI start per session."""

    async def verify_all() -> None:
        store = await open_store(database_url)
        try:
            for session_id, count in counts.items():
                verdict = verify(session_id, await store.read_chain(session_id))
                if not verdict.ok:
                    findings.add("a broken hash chain", f"{session_id}: {verdict.reason}")
                elif verdict.events != count:
                    findings.add(
                        "the API and the chain disagree", f"{session_id}: {count} vs {verdict.events}"
                    )
        finally:
            await store.close()

    anyio.run(verify_all)


def _audit_cli(database_url: str, data_dir: Path, session_id: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "audit", "verify", session_id, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TETHER_DATABASE_URL": database_url},
    )


def _first_difference(a: list[str], b: list[str]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


# The scenario -------------------------------------------------------------------------------


@dataclass
class Stage:
    server: ServerProcess
    database_url: str
    data_dir: Path
    api_key: str
    scripts: Scripts
    upstream: ServerProcess


def _slow_turn(scripts: Scripts) -> str:
    """A script (one per session: the 529 counters are per script) whose turn takes ``STEPS``
    tool calls, each preceded by a 529 whose ``retry-after`` the harness waits out."""
    pause = {"status": 529, "type": "overloaded_error", "message": "busy", "retry_after": STEP_PAUSE}
    turns: list[dict[str, Any]] = [
        {
            "fail_first": [pause],
            "content": [{"type": "tool_use", "name": "add", "input": {"a": step, "b": 1}}],
        }
        for step in range(STEPS)
    ]
    turns.append({"content": [{"type": "text", "text": "done: {{last_tool_result}}"}]})
    return scripts.add(turns)


class _Unreachable(Exception):
    """The gateway died or its API cannot serve after the fault: check what the clients saw."""


def _ride_out(stage: Stage, outage: Callable[[], Window | None], reads_stay_up: bool) -> None:
    """Start slow sessions, followers and client traffic; run ``outage`` (it returns when the
    fault is over, with the span it surely lasted when that is narrower than the call, e.g. a
    lock that took a while to get); let everything finish; then check everything the contract
    promises."""
    client = _client(stage.server, stage.api_key)
    environment = client.beta.environments.create(name="outage")
    echo = stage.scripts.add([{"content": [{"type": "text", "text": "echo: {{last_user_text}}"}]}])
    echo_agent = client.beta.agents.create(name="echo", model="claude-sonnet-4-6", system=echo)
    followers = _slow_sessions(stage, client, environment.id)
    slow_ids = [f.session_id for f in followers]
    traffic = Traffic(stage.server, stage.api_key, echo_agent.id, environment.id, list(slow_ids))
    findings = Findings()
    logs: dict[str, list[dict[str, Any]]] | None = None
    held: Window | None = None

    try:
        with _running(
            [traffic.writer, traffic.reader, traffic.prober, *(f.run for f in followers)],
            [traffic.stop, *(f.stop for f in followers)],
        ):
            _eventually(
                "every slow session is calling tools",
                lambda: all(len(f.ids) >= 3 for f in followers),
                RECOVERY_BOUND,
            )
            if not _within(RECOVERY_BOUND, lambda: not _never_ok(traffic.journal)):
                raise AssertionError(f"before the fault, never a 2xx from: {_never_ok(traffic.journal)}")
            began, began_at = time.monotonic(), datetime.now(UTC)
            held = outage()
            ended, ended_at = time.monotonic(), datetime.now(UTC)
            _recover(findings, stage.server, traffic, ended)
            traffic.stop.set()
            if stage.server.process.poll() is not None:
                findings.add("the gateway process died", f"exit code {stage.server.process.returncode}")
                raise _Unreachable
            logs = _settle(findings, client, followers)
            if logs is None:
                raise _Unreachable
    except _Unreachable:
        pass

    window = held or (began, ended)
    _check_api_answers(findings, traffic.journal.answers, reads_stay_up)
    for follower in followers:
        _check_api_answers(findings, follower.journal.answers, reads_stay_up)
    if reads_stay_up:
        _check_reads(
            findings, [*traffic.journal.answers, *(a for f in followers for a in f.journal.answers)], window
        )
    _check_probes(findings, traffic.journal, window)
    # A write in flight during the fault waits out the busy timeout, so a single writer makes
    # few calls in it: count those that overlap the fault, not only those that began in it.
    felt = [a for a in traffic.journal.of(*WRITES) if a.status == 503 and a.overlaps(window)]
    if not felt:
        findings.add("the fault never reached a client (no write answered 503 during it)", "")
    if logs is not None:
        for session_id, events in logs.items():
            _check_session(
                findings, session_id, events, session_id not in slow_ids, traffic.accepted.get(session_id)
            )
        for session_id in traffic.accepted:
            if session_id not in logs:
                findings.add("a session whose message was accepted is missing", session_id)
        spanned = [s for s in slow_ids if _at(logs[s][0]) < began_at and _at(logs[s][-1]) > ended_at]
        if not spanned:
            findings.add(
                "no turn was in flight through the whole outage (the test did not test it)", str(slow_ids)
            )
        for follower in followers:
            _check_follower(findings, follower, logs[follower.session_id])
        _check_chains(findings, stage.database_url, {s: len(events) for s, events in logs.items()})
        audited = _audit_cli(stage.database_url, stage.data_dir, slow_ids[0])
        if audited.returncode != 0 or "chain intact" not in audited.stdout:
            findings.add("tether audit verify failed", audited.stdout + audited.stderr)
        _check_serving(findings, client, echo_agent.id, environment.id)
        if stage.server.process.poll() is not None:
            findings.add("the gateway process died", f"exit code {stage.server.process.returncode}")

    if findings.problems:
        _fail(findings, stage.server, traffic.journal, window)


def _slow_sessions(stage: Stage, client: anthropic.Anthropic, environment_id: str) -> list[Follower]:
    """Start ``SLOW_SESSIONS`` slow turns; return a (not yet started) follower for each."""
    followers = []
    for _ in range(SLOW_SESSIONS):
        agent = mcp_agent(client, _slow_turn(stage.scripts), "ops", stage.upstream.url + "/mcp", name="slow")
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment_id)
        sent = client.beta.sessions.events.send(session.id, events=[user_message("count")])  # type: ignore[list-item]
        assert sent.data
        followers.append(Follower(stage.server, stage.api_key, session.id, sent.data[0].id))
    return followers


def _recover(findings: Findings, server: ServerProcess, traffic: Traffic, ended: float) -> None:
    """Wait for ``/ready`` to say 200 and for a message to be accepted after the fault."""
    if not _within(RECOVERY_BOUND, lambda: _ready(server) or server.process.poll() is not None):
        findings.add(
            "/ready did not answer 200 again", f"not within {RECOVERY_BOUND:.0f}s of the fault's end"
        )
    if not _within(
        RECOVERY_BOUND,
        lambda: (
            server.process.poll() is not None
            or any(a.status == 200 and a.started > ended for a in traffic.journal.of("send message"))
        ),
    ):
        findings.add(
            "no message was accepted after the fault's end",
            "; ".join(a.describe() for a in traffic.journal.of(*WRITES)[-3:]),
        )


def _settle(
    findings: Findings, client: anthropic.Anthropic, followers: list[Follower]
) -> dict[str, list[dict[str, Any]]] | None:
    """Wait (bounded) for every session in the store to finish its turn and for every follower
    to stream its session's last event; return every session's log (None, with a finding, if
    the API cannot list them). What does not settle is reported by the checks, one by one."""
    try:
        sessions = [s.id for s in client.beta.sessions.list(limit=100)]
    except anthropic.APIError as exc:
        findings.add("sessions cannot be listed after the outage", f"{type(exc).__name__}: {exc}")
        return None
    logs: dict[str, list[dict[str, Any]]] = {}

    def all_settled() -> bool:
        for session_id in sessions:
            if session_id not in logs:
                try:
                    events = _all_events(client, session_id)
                except anthropic.APIError:
                    return False
                if not _settled(events):
                    return False
                logs[session_id] = events
        return True

    _within(RECOVERY_BOUND, all_settled)
    try:
        for session_id in sessions:
            if session_id not in logs:
                logs[session_id] = _all_events(client, session_id)
    except anthropic.APIError as exc:
        findings.add("a session's events cannot be listed after the outage", f"{type(exc).__name__}: {exc}")
        return None
    for follower in followers:
        follower.final_id = logs[follower.session_id][-1]["id"]
    _within(RECOVERY_BOUND, lambda: all(f.done() for f in followers))
    return logs


def _check_follower(findings: Findings, follower: Follower, events: list[dict[str, Any]]) -> None:
    """Across its reconnects, a follower streamed the log after its start exactly once, in order."""
    log_ids = [e["id"] for e in events]
    expected = log_ids[log_ids.index(follower.after_id) + 1 :]
    if follower.ids != expected:
        findings.add(
            "a follower's stream differs from the log (lost or repeated events)",
            f"{follower.session_id}: streamed {len(follower.ids)}, logged {len(expected)}, "
            f"first difference at {_first_difference(follower.ids, expected)}",
        )


def _check_serving(
    findings: Findings, client: anthropic.Anthropic, agent_id: str, environment_id: str
) -> None:
    """A new session's whole turn streams live (no reconnect) after the outage."""
    try:
        fresh = client.beta.sessions.create(agent=agent_id, environment_id=environment_id)
        streamed = send_and_stream(client, fresh.id, [user_message("after the outage")])
    except (anthropic.APIError, httpx2.HTTPError) as exc:
        findings.add("a new session after the outage was not served", f"{type(exc).__name__}: {exc}")
        return
    replies = [e.content[0].text for e in streamed if e.type == "agent.message"]
    if replies != ["echo: after the outage"] or streamed[-1].stop_reason.type != "end_turn":
        findings.add("a new session after the outage was not served", str([e.type for e in streamed]))


def _fail(findings: Findings, server: ServerProcess, journal: Journal, window: Window) -> NoReturn:
    during = Counter(
        f"{a.op} {a.status if a.status is not None else 'no answer'}"
        for a in journal.answers
        if a.overlaps(window)
    )
    slowest: dict[str, float] = {}
    for answer in journal.answers:
        slowest[answer.op] = max(slowest.get(answer.op, 0.0), answer.elapsed)
    raise AssertionError(
        f"{findings.report()}\n"
        f"calls in flight during the fault ({window[1] - window[0]:.1f}s): {dict(sorted(during.items()))}\n"
        f"slowest answer per call: { {op: round(t, 1) for op, t in sorted(slowest.items())} }\n"
        f"gateway log: {_tracebacks(server.output)}"
    )


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ ")
CHAINING = ("Traceback", "During handling", "The above exception")


def _tracebacks(output: list[str]) -> str:
    """Each distinct (log record, exception) pair behind the gateway's tracebacks, counted."""
    pairs: Counter[str] = Counter()
    record, exception, in_traceback = "", "", False
    for line in [*output, "0000-00-00 00:00:00,000 end"]:
        if LOG_RECORD.match(line):
            if exception:
                pairs[f"{record[:160]} <- {exception[:200]}"] += 1
            record, exception, in_traceback = LOG_RECORD.sub("", line), "", False
        elif line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line and not line[0].isspace() and not line.startswith(CHAINING):
            exception = line
    if not pairs:
        return "no tracebacks"
    return f"{pairs.total()} tracebacks:\n" + "\n".join(f"  {n}x {pair}" for pair, n in pairs.most_common())


# Fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


@pytest.fixture
def stage_for(
    tmp_path: Path, model_server: ServerProcess, api_key: str, scripts: Scripts, upstream: ServerProcess
) -> Iterator[Callable[[str], Stage]]:
    """Start a gateway on a database URL; stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(database_url: str) -> Stage:
        data_dir = tmp_path / "data"
        env = shared_database_env(api_key, model_server.url, database_url, fast_recovery=True)
        server = start_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env)
        started.append(server)
        return Stage(server, database_url, data_dir, api_key, scripts, upstream)

    yield start
    for server in started:
        server.stop()


# The outages --------------------------------------------------------------------------------


def test_sqlite_locked_for_ten_seconds(stage_for: Callable[[str], Stage], tmp_path: Path) -> None:
    """Another connection holds the write lock for 10 s: writes answer 503 with Retry-After,
    reads (list, retrieve, events, streams) keep answering 200, ``/ready`` says 503 (no write
    can commit), and every turn resumes when the lock goes."""
    database = tmp_path / "tether.db"
    stage = stage_for(f"sqlite:///{database}")

    def locked() -> Window:
        # Taking the lock may wait for the gateway's own writes: the fault starts once it is held.
        with sqlite_write_lock_held(database):
            held = time.monotonic()
            time.sleep(10)  # the fault's length, not a wait for something
        return held, time.monotonic()

    _ride_out(stage, locked, reads_stay_up=True)


def test_sqlite_on_a_full_filesystem(stage_for: Callable[[str], Stage], tmp_path: Path) -> None:
    """The database's filesystem (a 16 MiB tmpfs) is filled to the last byte for 5 s, after its
    write-ahead log was truncated so the next commit needs new blocks: writes answer 503,
    reads keep working, ``/ready`` says 503 (no write can commit), and nothing is lost or
    written twice once space is freed."""
    with small_tmpfs(tmp_path / "disk", "16m") as disk:
        database = disk / "tether.db"
        stage = stage_for(f"sqlite:///{database}")

        def disk_full() -> Window:
            truncate_wal(database)
            with fill(disk / "ballast"):
                full = time.monotonic()
                time.sleep(5)  # the fault's length, not a wait for something
            return full, time.monotonic()

        try:
            _ride_out(stage, disk_full, reads_stay_up=True)
        finally:
            stage.server.stop()


def test_postgres_unreachable_then_restarted(stage_for: Callable[[str], Stage]) -> None:
    """PostgreSQL (a cluster of this test's own, behind a TCP gate) drops every connection and
    refuses new ones for 5 s; once the gateway is ready again, the cluster is restarted for
    real (``pg_ctl restart -m fast``). Any call may answer 503 meanwhile, never 500 or hang;
    ``/ready`` says 503 while the database is unreachable; every turn finishes afterwards."""
    with throwaway_cluster() as cluster, TcpGate("127.0.0.1", cluster.port) as gate:
        stage = stage_for(cluster.dsn_on(gate.port))

        def unreachable_then_restarted() -> None:
            gate.refuse(5)
            _eventually("/ready is 200 after the refusal", lambda: _ready(stage.server), RECOVERY_BOUND)
            cluster.restart()

        try:
            _ride_out(stage, unreachable_then_restarted, reads_stay_up=False)
        finally:
            stage.server.stop()
