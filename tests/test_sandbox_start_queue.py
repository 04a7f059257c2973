"""Sandbox starts under load: the host's start queue, the back-off after a failed start, and
an egress proxy only where the environment has somewhere to go.

The queue is specified first on its own (admission, order, cancellation, load), then through a
``SandboxPool`` that starts real sandbox processes, then end to end: twenty sessions starting
their sandboxes at once through a real gateway on this (small) host, every tool call answered.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import anyio.to_thread
import pytest

from gateway.tools.sandbox import Launch, SandboxPool, SandboxStartFailed
from gateway.tools.start_queue import Backoff, StartQueue, StillQueued
from sandbox_server import workspace_fs
from sandbox_server.egress import TOKEN_ENV as EGRESS_TOKEN_ENV
from tests.conftest import Scripts
from tests.support.processes import ServerProcess, start_server
from tests.support.self_hosted import eventually
from tests.support.sessions import send_and_stream, user_message

SESSIONS = 20
CALLS_PER_SESSION = 2

# The queue on its own ------------------------------------------------------------------------


class Holders:
    """Tasks that each take a place in a queue and keep it until told to let go."""

    def __init__(self, queue: StartQueue) -> None:
        self.queue = queue
        self.admitted: list[int] = []
        self.done: dict[int, anyio.Event] = {}
        self.peak = 0

    async def hold(self, index: int) -> None:
        self.done[index] = anyio.Event()
        async with self.queue.slot():
            self.admitted.append(index)
            self.peak = max(self.peak, self.queue.running)
            await self.done[index].wait()


@pytest.mark.anyio
async def test_the_queue_admits_at_most_its_limit_at_once() -> None:
    queue = StartQueue(limit=2)
    holders = Holders(queue)
    async with anyio.create_task_group() as tasks:
        for index in range(5):
            tasks.start_soon(holders.hold, index)
        await anyio.wait_all_tasks_blocked()
        assert (len(holders.admitted), queue.running, queue.waiting) == (2, 2, 3)
        for index in range(5):
            holders.done[index].set()
            await anyio.wait_all_tasks_blocked()
    assert holders.peak == 2
    assert (queue.running, queue.waiting) == (0, 0)


@pytest.mark.anyio
async def test_the_queue_admits_in_arrival_order() -> None:
    queue = StartQueue(limit=1)
    holders = Holders(queue)
    async with anyio.create_task_group() as tasks:
        for index in range(5):
            tasks.start_soon(holders.hold, index)
            await anyio.wait_all_tasks_blocked()  # queued before the next one arrives
        for index in range(5):
            assert holders.admitted == list(range(index + 1))
            holders.done[index].set()
            await anyio.wait_all_tasks_blocked()
    assert holders.admitted == [0, 1, 2, 3, 4]


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    queue = StartQueue(limit=1)
    holders = Holders(queue)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(holders.hold, 0)
        await anyio.wait_all_tasks_blocked()
        impatient = anyio.CancelScope()
        tasks.start_soon(_wait_in, queue, impatient)
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(holders.hold, 2)
        await anyio.wait_all_tasks_blocked()
        assert queue.waiting == 2

        impatient.cancel()
        await anyio.wait_all_tasks_blocked()
        assert queue.waiting == 1
        holders.done[0].set()
        await anyio.wait_all_tasks_blocked()
        assert holders.admitted == [0, 2]
        holders.done[2].set()
    assert (queue.running, queue.waiting) == (0, 0)


async def _wait_in(queue: StartQueue, scope: anyio.CancelScope) -> None:
    with scope:
        async with queue.slot():
            raise AssertionError("a cancelled waiter was admitted")


@pytest.mark.anyio
async def test_a_place_handed_to_a_waiter_as_it_is_cancelled_goes_to_the_next_one() -> None:
    queue = StartQueue(limit=1)
    holders = Holders(queue)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(holders.hold, 0)
        await anyio.wait_all_tasks_blocked()
        impatient = anyio.CancelScope()
        tasks.start_soon(_wait_in, queue, impatient)
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(holders.hold, 2)
        await anyio.wait_all_tasks_blocked()

        holders.done[0].set()  # the place goes to the impatient waiter...
        impatient.cancel()  # ...which is cancelled before it runs again
        await anyio.wait_all_tasks_blocked()
        assert holders.admitted == [0, 2]
        assert (queue.running, queue.waiting) == (1, 0)
        holders.done[2].set()
    assert (queue.running, queue.waiting) == (0, 0)


@pytest.mark.anyio
async def test_a_waiter_out_of_patience_learns_its_place_and_leaves() -> None:
    queue = StartQueue(limit=1)
    holders = Holders(queue)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(holders.hold, 0)
        tasks.start_soon(holders.hold, 1)
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(StillQueued) as raised:
            async with queue.slot(patience=0):
                raise AssertionError("admitted past a full queue")
        assert (raised.value.position, raised.value.running) == (2, 1)
        assert "position 2 in the start queue (1 waiting ahead of it, 1 starting)" in str(raised.value)
        assert queue.waiting == 1
        holders.done[0].set()
        await anyio.wait_all_tasks_blocked()
        holders.done[1].set()
    assert (queue.running, queue.waiting) == (0, 0)


@pytest.mark.anyio
async def test_the_start_timeout_grows_with_the_starts_sharing_the_host() -> None:
    queue = StartQueue(limit=4, cpus=2)
    async with queue.slot() as alone:
        assert alone.load == 1.0
    holders = Holders(queue)
    async with anyio.create_task_group() as tasks:
        for index in range(3):
            tasks.start_soon(holders.hold, index)
        await anyio.wait_all_tasks_blocked()
        async with queue.slot() as crowded:  # four starts on two CPUs
            assert crowded.load == 2.0
        for event in holders.done.values():
            event.set()


def test_the_back_off_grows_exponentially_is_jittered_and_bounded() -> None:
    highest = Backoff(base=1.0, cap=8.0, jitter=lambda: 0.999999)
    lowest = Backoff(base=1.0, cap=8.0, jitter=lambda: 0.0)
    assert [round(highest.delay(n), 3) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]
    assert [lowest.delay(n) for n in range(1, 7)] == [0.5, 1, 2, 4, 4, 4]
    assert Backoff().delay(0) == 0
    assert Backoff(cap=30.0).delay(10_000) <= 30.0


# Through a pool of real sandboxes -----------------------------------------------------------


class CountingPlan:
    """A plan hook that records when each start really began (after its admission)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env or {}
        self.began: list[float] = []

    async def __call__(self, session_id: str) -> Launch:
        self.began.append(anyio.current_time())
        return Launch(list(self.args), dict(self.env))


@pytest.mark.anyio
async def test_the_start_timeout_counts_from_admission_not_from_the_queue(tmp_path: Path) -> None:
    """The sandbox hangs mid-start (fetching its egress credentials from a server that never
    answers), so it fails on its timeout: measured from the moment it was admitted, however
    long it waited before that."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    url = f"http://127.0.0.1:{hung.getsockname()[1]}/credentials"
    plan = CountingPlan(["--egress", "limited", "--credentials-url", url], {EGRESS_TOKEN_ENV: "tok_x"})
    queue = StartQueue(limit=1)
    timeout = 2.0
    pool = SandboxPool(tmp_path / "ws", plan=plan, start_queue=queue, start_timeout=timeout)
    failed: list[tuple[float, str]] = []

    async def start() -> None:
        with pytest.raises(SandboxStartFailed) as raised:
            await pool.endpoint("sesn_queued")
        failed.append((anyio.current_time(), str(raised.value)))

    try:
        async with anyio.create_task_group() as tasks:
            async with queue.slot():
                called = anyio.current_time()
                tasks.start_soon(start)
                await anyio.wait_all_tasks_blocked()
                assert queue.waiting == 1 and plan.began == []
                await anyio.sleep(timeout + 0.5)  # longer in the queue than the whole timeout
            admitted = anyio.current_time()
        [(failed_at, reason)] = failed
        [began] = plan.began
        assert began >= admitted > called + timeout
        assert failed_at - began >= timeout
        assert reason == "the sandbox did not start (not ready in 2s)"
        assert pool.running() == []
    finally:
        hung.close()
        await pool.close()
        await anyio.to_thread.run_sync(workspace_fs.remove, pool.workspace("sesn_queued"))


@pytest.mark.anyio
async def test_a_call_out_of_patience_in_the_queue_is_told_it_is_still_waiting(tmp_path: Path) -> None:
    plan = CountingPlan([])
    queue = StartQueue(limit=1)
    pool = SandboxPool(tmp_path / "ws", plan=plan, start_queue=queue)
    async with queue.slot():
        with pytest.raises(StillQueued) as raised:
            await pool.endpoint("sesn_patient", patience=0)
    assert raised.value.position == 1 and raised.value.running == 1
    assert (queue.running, queue.waiting) == (0, 0)
    assert plan.began == [], "nothing was started"


@pytest.mark.anyio
async def test_a_failed_start_backs_off_before_the_next_attempt_and_keeps_its_reason(
    tmp_path: Path,
) -> None:
    plan = CountingPlan(["--no-such-flag"])  # the sandbox exits at once: a start that fails
    backoff = Backoff(base=1.0, cap=1.0, jitter=lambda: 0.999999)
    pool = SandboxPool(tmp_path / "ws", plan=plan, backoff=backoff)
    try:
        with pytest.raises(SandboxStartFailed, match=r"exited with status 2") as first:
            await pool.endpoint("sesn_broken")
        failed_at = anyio.current_time()

        with pytest.raises(SandboxStartFailed) as impatient:
            await pool.endpoint("sesn_broken", patience=0)
        assert str(impatient.value).startswith(f"{first.value}; the next attempt is in ")
        assert len(plan.began) == 1, "no attempt during the back-off"

        with pytest.raises(SandboxStartFailed, match=r"exited with status 2"):
            await pool.endpoint("sesn_broken")  # waits out the back-off, then tries again
        assert len(plan.began) == 2
        assert plan.began[1] - failed_at >= 0.99
    finally:
        await pool.close()


# End to end -----------------------------------------------------------------------------------


def _processes_naming(text: str) -> list[int]:
    """Sandbox servers whose command line mentions ``text`` (a data directory, a session id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and b"sandbox_server.started" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def busy_gateway(tmp_path: Path, model_server: ServerProcess, api_key: str) -> Iterator[ServerProcess]:
    """A gateway of its own, with the default start queue, so the burst below is all it serves."""
    env = {"TETHER_API_KEYS": api_key, "TETHER_MODEL_BASE_URL": model_server.url, "ANTHROPIC_API_KEY": ""}
    server = start_server(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data")], env)
    server.data_dir = tmp_path / "data"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()


def _bash(command: str) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": "bash", "input": {"command": command}}]}


def test_twenty_sessions_starting_sandboxes_at_once_all_get_their_tool_calls_answered(
    busy_gateway: ServerProcess, api_key: str, scripts: Scripts
) -> None:
    with anthropic.Anthropic(base_url=busy_gateway.url, api_key=api_key, max_retries=0) as client:
        environment = client.beta.environments.create(name="burst")
        sessions = []
        for index in range(SESSIONS):
            commands = [f"echo session-{index}-call-{call}" for call in range(CALLS_PER_SESSION)]
            marker = scripts.add([*map(_bash, commands), {"content": [{"type": "text", "text": "done"}]}])
            agent = client.beta.agents.create(
                name=f"burst-{index}",
                model="claude-sonnet-4-6",
                system=marker,
                tools=[{"type": "agent_toolset_20260401"}],
            )
            sessions.append(client.beta.sessions.create(agent=agent.id, environment_id=environment.id).id)

    results: dict[int, list[tuple[bool, str]]] = {}

    def run(index: int) -> None:
        with anthropic.Anthropic(
            base_url=busy_gateway.url, api_key=api_key, max_retries=0, timeout=600
        ) as own:
            streamed = send_and_stream(own, sessions[index], [user_message("go")])
        results[index] = [
            (bool(e.is_error), e.content[0].text if e.content else "")
            for e in streamed
            if e.type == "agent.tool_result"
        ]

    began = time.monotonic()
    threads = [threading.Thread(target=run, args=(index,)) for index in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.monotonic() - began

    assert sorted(results) == list(range(SESSIONS))
    failed = {index: r for index, r in results.items() if any(is_error for is_error, _ in r)}
    assert failed == {}, f"tool calls failed after {elapsed:.0f}s: {failed}"
    for index, answered in results.items():
        assert [text.strip() for _, text in answered] == [
            f"session-{index}-call-{call}" for call in range(CALLS_PER_SESSION)
        ]
    assert any("sandbox start queued" in line for line in busy_gateway.output), "the queue was used"

    data_dir = str(busy_gateway.data_dir)  # type: ignore[attr-defined]
    assert len(_processes_naming(data_dir)) == SESSIONS
    busy_gateway.stop()
    eventually(lambda: not _processes_naming(data_dir), "every sandbox to exit with its gateway")


def test_an_egress_proxy_runs_only_where_the_environment_has_somewhere_to_go(
    client: anthropic.Anthropic, scripts: Scripts
) -> None:
    """``unrestricted`` keeps its proxy: it is the sandbox's only route out, and what keeps
    internal addresses out of reach. ``limited`` with an allowed host keeps it too. ``limited``
    allowing nothing, without secrets, reaches nothing either way: no proxy is started."""
    configs: dict[str, dict[str, Any]] = {
        "unrestricted": {"type": "cloud", "networking": {"type": "unrestricted"}},
        "limited": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]}},
        "nowhere": {"type": "cloud", "networking": {"type": "limited"}},
    }
    seen: dict[str, tuple[str, str]] = {}
    for name, config in configs.items():
        marker = scripts.add([_bash("env | grep -c '^HTTPS_PROXY=' || true"), {"content": []}])
        environment = client.beta.environments.create(
            name=f"net-{name}-{secrets.token_hex(3)}", config=config
        )
        agent = client.beta.agents.create(
            name=name, model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
        )
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        streamed = send_and_stream(client, session.id, [user_message("go")])
        [result] = [e for e in streamed if e.type == "agent.tool_result"]
        assert not result.is_error
        [pid] = _processes_naming(session.id)
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        mode = cmdline[cmdline.index(b"--egress", cmdline.index(b"--session-id")) + 1].decode()
        seen[name] = (result.content[0].text.strip(), mode)
        client.beta.sessions.delete(session.id)

    assert seen == {
        "unrestricted": ("1", "unrestricted"),
        "limited": ("1", "limited"),
        "nowhere": ("0", "none"),
    }
