"""MCP audit records of calls in flight together share one commit, and none is lost.

``AuditLog`` is driven with a store whose commits wait for the test's word, so records
queue up behind a commit in progress: they must go out together in the next one, each
caller returning only once its own record is committed, also a caller that is cancelled
while it waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from gateway.mcp_gateway import audit as audit_module
from gateway.mcp_gateway.access import Caller
from gateway.mcp_gateway.audit import KIND, AuditLog, CallRecord
from gateway.store import open_store
from gateway.store.base import Body

pytestmark = pytest.mark.anyio


class GatedStore:
    """Keeps what ``insert_many`` commits; each commit waits until the test opens the gate."""

    def __init__(self) -> None:
        self.commits: list[list[str]] = []
        self.gate = anyio.Event()
        self.waiting = anyio.Event()

    async def insert_many(self, kind: str, bodies: Sequence[Body]) -> None:
        assert kind == KIND
        self.waiting.set()
        await self.gate.wait()
        self.commits.append([body["tool"] for body in bodies])


def _call(tool: str) -> CallRecord:
    caller = Caller(kind="api_key", id="key_1")
    return CallRecord(caller, "vs", "tools/call", tool, "up", tool, {"a": 1}, "ok", 1.0)


async def test_records_queued_behind_a_commit_share_the_next_one() -> None:
    store = GatedStore()
    audit = AuditLog(store)  # type: ignore[arg-type]
    returned: list[str] = []

    async def record(tool: str) -> None:
        await audit.record(_call(tool))
        returned.append(tool)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(record, "first")
        await store.waiting.wait()  # "first" is being committed on its own
        for tool in ("a", "b", "c"):
            tasks.start_soon(record, tool)
        await anyio.wait_all_tasks_blocked()
        assert returned == []  # nobody returns before its record is committed
        store.gate.set()
    assert store.commits == [["first"], ["a", "b", "c"]]
    assert sorted(returned) == ["a", "b", "c", "first"]


async def test_a_cancelled_caller_still_leaves_its_record() -> None:
    store = GatedStore()
    audit = AuditLog(store)  # type: ignore[arg-type]
    returned = anyio.Event()

    async def cancelled_at_once() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await audit.record(_call("cancelled"))  # shielded: it waits for its commit anyway
        returned.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(audit.record, _call("first"))
        await store.waiting.wait()
        tasks.start_soon(cancelled_at_once)
        await anyio.wait_all_tasks_blocked()
        assert not returned.is_set()
        store.gate.set()
    assert returned.is_set() and store.commits == [["first"], ["cancelled"]]


async def test_batches_land_in_a_real_store(tmp_path: Path) -> None:
    store = await open_store(f"sqlite://{tmp_path}/store.db")
    try:
        audit = AuditLog(store)
        async with anyio.create_task_group() as tasks:
            for i in range(20):
                tasks.start_soon(audit.record, _call(f"t{i}"))
        page = await audit.query({}, None, 100)
        assert sorted(body["tool"] for body in page.items) == sorted(f"t{i}" for i in range(20))
    finally:
        await store.close()


class PickyStore:
    """Refuses a batch holding the record of tool ``bad``, and that record on its own."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    async def insert_many(self, kind: str, bodies: Sequence[Body]) -> None:
        if any(body["tool"] == "bad" for body in bodies):
            raise ValueError("refused")
        self.stored += [body["tool"] for body in bodies]

    async def insert(self, kind: str, body: Body) -> None:
        await self.insert_many(kind, [body])


async def test_one_refused_record_does_not_take_its_batch_down() -> None:
    store = GatedStore()
    picky = PickyStore()
    audit = AuditLog(store)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(audit.record, _call("first"))
        await store.waiting.wait()
        audit.store = picky  # type: ignore[assignment]  # the next batch meets the picky store
        for tool in ("a", "bad", "b"):
            tasks.start_soon(audit.record, _call(tool))
        await anyio.wait_all_tasks_blocked()
        store.gate.set()
    assert store.commits == [["first"]] and sorted(picky.stored) == ["a", "b"]


async def test_a_hung_store_holds_no_call_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "COMMIT_TIMEOUT", 0.2)
    store = GatedStore()  # its gate never opens
    with anyio.fail_after(5):
        body = await AuditLog(store).record(_call("stuck"))  # type: ignore[arg-type]
    assert body["tool"] == "stuck" and store.commits == []


async def test_a_nul_in_a_tool_name_is_stored_without_it() -> None:
    """PostgreSQL's jsonb refuses NUL: the record keeps the rest of the name."""
    store = GatedStore()
    store.gate.set()
    body = await AuditLog(store).record(_call("ev\x00il"))  # type: ignore[arg-type]
    assert body["tool"] == "evil" and store.commits == [["evil"]]
