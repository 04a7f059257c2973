"""What the harness benchmarks share: a scripted model and a gateway as real processes on
loopback, scripts and agents for short turns, a light SSE reader, and figures.

The gateway can run under ``cProfile`` (``profile=PATH``): the profile covers its event loop
thread only (SQLite runs in worker threads), so ``thread_cpu`` reports how the process's CPU
time splits between the loop and the rest.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.processes import ServerProcess, start_server

TOOL_NAME = "lookup"
SCRIPT_TURNS = 4000
"""Scripted replies per session; a session that outlives them still gets a short text reply."""


@dataclass
class Stack:
    model: ServerProcess
    gateway: ServerProcess
    key: str
    data_dir: Path
    database: str

    @property
    def headers(self) -> dict[str, str]:
        return {"x-api-key": self.key}


@contextmanager
def running_stack(
    workdir: Path,
    database_url: str | None = None,
    prompt_caching: bool = True,
    profile: Path | None = None,
) -> Iterator[Stack]:
    """A scripted model and a gateway using it; SQLite in ``workdir`` unless ``database_url``."""
    key = "bench-" + secrets.token_hex(8)
    data_dir = workdir / f"gateway-{secrets.token_hex(3)}"
    model = start_server(["model", "--port", "0"])
    env = {
        "TETHER_API_KEYS": key,
        "TETHER_MODEL_BASE_URL": model.url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_PROMPT_CACHING": "on" if prompt_caching else "off",
    }
    if database_url:
        env["TETHER_DATABASE_URL"] = database_url
    args = ["gateway", "--port", "0", "--data-dir", str(data_dir)]
    try:
        if profile is None:
            gateway = start_server(args, env)
        else:
            gateway = start_server(["-o", str(profile), "-m", "gateway.cli", *args], env, module="cProfile")
    except BaseException:
        model.stop()
        raise
    database = "postgresql" if database_url and database_url.startswith("postgres") else "sqlite"
    try:
        yield Stack(model, gateway, key, data_dir, database)
    finally:
        if profile is not None:
            # uvicorn re-raises the signal it stopped on: SIGINT ends in a KeyboardInterrupt,
            # which lets cProfile write its file (SIGTERM would kill the process first).
            gateway.process.send_signal(signal.SIGINT)
            gateway.process.wait(120)
        gateway.stop()
        model.stop()


def add_script(model_url: str, with_tool: bool) -> str:
    """A script of short turns (a text reply, or a custom tool call and then a text reply)
    under a fresh marker to put in an agent's system prompt."""
    marker = "bench-" + secrets.token_hex(8)
    text = {"content": [{"type": "text", "text": "Done."}]}
    if with_tool:
        call = {"content": [{"type": "tool_use", "name": TOOL_NAME, "input": {"q": "x"}}]}
        turns = [call, text] * (SCRIPT_TURNS // 2)
    else:
        turns = [text] * SCRIPT_TURNS
    reply = httpx2.post(f"{model_url}/_scripts", json={"match": marker, "turns": turns}, timeout=60)
    reply.raise_for_status()
    return marker


async def create_agent(http: httpx2.AsyncClient, marker: str, with_tool: bool) -> str:
    tools: list[dict[str, Any]] = []
    if with_tool:
        schema = {"type": "object", "properties": {"q": {"type": "string"}}}
        tools = [{"type": "custom", "name": TOOL_NAME, "description": "Look up", "input_schema": schema}]
    body = {"name": "bench", "model": "claude-sonnet-4-5", "system": f"Bench agent {marker}.", "tools": tools}
    reply = await http.post("/v1/agents", json=body)
    reply.raise_for_status()
    return str(reply.json()["id"])


async def create_sessions(http: httpx2.AsyncClient, agent_id: str, count: int) -> list[str]:
    env = await http.post("/v1/environments", json={"name": "bench-" + secrets.token_hex(3)})
    env.raise_for_status()
    created = []
    for _ in range(count):
        reply = await http.post("/v1/sessions", json={"agent": agent_id, "environment_id": env.json()["id"]})
        reply.raise_for_status()
        created.append(str(reply.json()["id"]))
    return created


def user_message(text: str = "Go on.") -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def tool_result(use_id: str) -> dict[str, Any]:
    return {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": use_id,
        "content": [{"type": "text", "text": "42"}],
    }


@dataclass
class Arrival:
    body: dict[str, Any]
    at: float
    """``time.perf_counter()`` when its frame was read."""


class SessionStream:
    """A session's SSE stream read into a queue of events, each stamped when it arrived."""

    def __init__(self, http: httpx2.AsyncClient, session_id: str) -> None:
        self.http = http
        self.session_id = session_id
        self.queue: asyncio.Queue[Arrival] = asyncio.Queue()
        self.arrived: dict[str, float] = {}
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> SessionStream:
        self._task = asyncio.create_task(self._read())
        await self._opened.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _read(self) -> None:
        path = f"/v1/sessions/{self.session_id}/events/stream"
        async with self.http.stream("GET", path, timeout=httpx2.Timeout(30, read=None)) as stream:
            stream.raise_for_status()
            self._opened.set()
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    at = time.perf_counter()
                    body = json.loads(line[6:])
                    if "id" in body:
                        self.arrived[body["id"]] = at
                    self.queue.put_nowait(Arrival(body, at))

    async def until(self, *types: str, timeout: float = 120) -> Arrival:
        """The next event of one of ``types`` (others are skipped)."""
        while True:
            arrival = await asyncio.wait_for(self.queue.get(), timeout)
            if arrival.body["type"] in types:
                return arrival


@dataclass
class TurnTimes:
    """A finished turn as the log times it (``processed_at`` is assigned at commit)."""

    seq: int
    """The seq of the turn's ``user.message``."""
    total: float
    model: float
    client: float
    """Spent waiting for the client (a custom tool's result)."""
    before_model: float
    after_model: float

    @property
    def overhead(self) -> float:
        """The gateway's own time in the turn: all of it but the model's and the client's."""
        return self.total - self.model - self.client


@dataclass
class TurnClock:
    """Folds one turn's events (as streamed or as listed) into ``TurnTimes``; use a fresh
    clock for each turn."""

    seq: int = 0
    began: datetime | None = None
    model: float = 0.0
    client: float = 0.0
    before_model: float | None = None
    after_model: float = 0.0
    _start: datetime | None = None
    _end: datetime | None = None
    _waiting: datetime | None = None

    def add(self, body: dict[str, Any], seq: int = 0) -> TurnTimes | None:
        """Fold one event; the turn's times once it ends (idle with ``end_turn``)."""
        moment = datetime.fromisoformat(body["processed_at"])
        kind = body["type"]
        if kind == "user.message" and self.began is None:
            self.began, self.seq = moment, seq
        if self.began is None:
            return None
        if kind == "span.model_request_start":
            self._start = moment
            if self.before_model is None:
                self.before_model = (moment - self.began).total_seconds()
        elif kind == "span.model_request_end" and self._start is not None:
            self.model += (moment - self._start).total_seconds()
            self._end = moment
        elif kind == "user.custom_tool_result" and self._waiting is not None:
            self.client += (moment - self._waiting).total_seconds()
            self._waiting = None
        elif kind == "session.status_idle":
            if self._end is not None:
                self.after_model += (moment - self._end).total_seconds()
                self._end = None
            if body["stop_reason"]["type"] == "requires_action":
                self._waiting = moment
                return None
            return TurnTimes(
                seq=self.seq,
                total=(moment - self.began).total_seconds(),
                model=self.model,
                client=self.client,
                before_model=self.before_model or 0.0,
                after_model=self.after_model,
            )
        return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the event loop thread (the main one) and of all other threads together
    (anyio's worker threads, where SQLite runs; asyncpg runs on the loop)."""
    ticks = os.sysconf("SC_CLK_TCK")
    totals: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        kind = "event loop thread" if task.name == str(pid) else "other threads"
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return totals


async def clear_model_requests(model_url: str, every: float) -> None:
    """The scripted model keeps every request it served, and requests carry the whole
    conversation: clear them now and then so its memory stays flat through a long run."""
    async with httpx2.AsyncClient(base_url=model_url, timeout=30) as http:
        while True:
            await asyncio.sleep(every)
            await http.delete("/_requests")


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs"
