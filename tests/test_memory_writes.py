"""``memories.snapshot``, ``write`` and ``remove``: how a session's sandbox reads a memory store
and writes back what it changed, on SQLite and PostgreSQL.

A write by path creates or replaces, a remove deletes, each only while the memory's content
still hashes to what the caller saw (or, with ``ABSENT``, while there is none), and each change
is a version naming the session. Concurrent writers expecting the same content: exactly one
wins. Versions are listed in the order their changes committed, and one a crash left pending
is written out by the next read. Session writes are seen through the SDK like any other.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import anyio
import pytest

from gateway.errors import InvalidRequest, NotFound, RequestTooLarge
from gateway.resources import memories, memory_stores
from gateway.resources.memories import ABSENT, PathConflict, PreconditionFailed
from gateway.resources.memory_stores import StoreArchived
from gateway.schemas.memory_stores import MemoryStoreCreate, session_actor
from gateway.store import open_store
from gateway.store.base import Body, Store
from tests.conftest import gateway_data_dir
from tests.support.memory_stores import sha256
from tests.support.postgres import empty_store
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.anyio
SESSION = session_actor("sesn_writer")


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with empty_store(request.param, tmp_path) as opened:
        yield opened


@pytest.fixture
async def store_id(store: Store) -> str:
    body = await memory_stores.create(store, MemoryStoreCreate(name="mounted"))
    return str(body["id"])


async def _history(store: Store, store_id: str, **equals: str) -> list[Body]:
    page = await memory_stores.list_versions(
        store, store_id, cursor=None, limit=100, equals=equals, created=(None, None)
    )
    return page.items


async def test_a_write_creates_or_replaces_and_the_snapshot_shows_what_is_live(
    store: Store, store_id: str
) -> None:
    created = await memories.write(
        store, store_id, "/notes/a.md", "one", expected_sha256=ABSENT, actor=SESSION
    )
    assert created["type"] == "memory" and created["content"] is None
    assert (created["path"], created["content_sha256"]) == ("/notes/a.md", sha256("one"))
    replaced = await memories.write(
        store, store_id, "/notes/a.md", "two", expected_sha256=sha256("one"), actor=SESSION
    )
    assert replaced["id"] == created["id"] and replaced["memory_version_id"] != created["memory_version_id"]
    await memories.write(store, store_id, "/b.md", "", expected_sha256=None, actor=SESSION)
    again = await memories.write(store, store_id, "/b.md", "", expected_sha256=None, actor=SESSION)

    assert await memories.snapshot(store, store_id) == [
        ("/b.md", "", sha256("")),
        ("/notes/a.md", "two", sha256("two")),
    ]
    history = await _history(store, store_id)
    assert [(v["operation"], v["path"]) for v in history] == [
        ("created", "/b.md"),  # writing what is there already records nothing
        ("modified", "/notes/a.md"),
        ("created", "/notes/a.md"),
    ]
    assert history[0]["id"] == again["memory_version_id"]
    assert all(v["created_by"] == {"type": "session_actor", "session_id": "sesn_writer"} for v in history)


async def test_write_and_remove_apply_the_apis_preconditions(store: Store, store_id: str) -> None:
    await memories.write(store, store_id, "/a.md", "seen", expected_sha256=None, actor=SESSION)
    with pytest.raises(PreconditionFailed):
        await memories.write(store, store_id, "/a.md", "mine", expected_sha256=sha256("stale"), actor=SESSION)
    with pytest.raises(PreconditionFailed):
        await memories.write(
            store, store_id, "/gone.md", "mine", expected_sha256=sha256("seen"), actor=SESSION
        )
    with pytest.raises(PathConflict):
        await memories.write(store, store_id, "/a.md", "mine", expected_sha256=ABSENT, actor=SESSION)
    with pytest.raises(PathConflict):
        await memories.write(store, store_id, "/a.md/under.md", "mine", expected_sha256=None, actor=SESSION)
    with pytest.raises(PreconditionFailed):
        await memories.remove(store, store_id, "/a.md", expected_sha256=sha256("stale"), actor=SESSION)
    with pytest.raises(NotFound):
        await memories.remove(store, store_id, "/gone.md", expected_sha256=None, actor=SESSION)
    assert await memories.snapshot(store, store_id) == [("/a.md", "seen", sha256("seen"))]

    await memories.remove(store, store_id, "/a.md", expected_sha256=sha256("seen"), actor=SESSION)
    assert await memories.snapshot(store, store_id) == []
    deleted = (await _history(store, store_id))[0]
    assert (deleted["operation"], deleted["path"], deleted["content"]) == ("deleted", "/a.md", None)
    assert deleted["created_by"] == SESSION


async def test_bad_arguments_are_refused_before_anything_is_written(store: Store, store_id: str) -> None:
    with pytest.raises(InvalidRequest, match=r"path: '\.\./up\.md' must start with '/'"):
        await memories.write(store, store_id, "../up.md", "x", expected_sha256=None, actor=SESSION)
    with pytest.raises(InvalidRequest, match=re.escape("'/a/../b.md'")):
        await memories.remove(store, store_id, "/a/../b.md", expected_sha256=None, actor=SESSION)
    with pytest.raises(RequestTooLarge):
        await memories.write(store, store_id, "/big.md", "x" * 102_401, expected_sha256=None, actor=SESSION)
    with pytest.raises(InvalidRequest, match="expected_content_sha256"):
        await memories.write(store, store_id, "/a.md", "x", expected_sha256="abc", actor=SESSION)
    with pytest.raises(ValueError, match="not an actor"):
        await memories.write(store, store_id, "/a.md", "x", expected_sha256=None, actor={"type": "robot"})
    with pytest.raises(NotFound):
        await memories.snapshot(store, "memstore_missing")
    assert await memories.snapshot(store, store_id) == [] and await _history(store, store_id) == []


async def test_an_archived_store_takes_removals_but_not_writes(store: Store, store_id: str) -> None:
    await memories.write(store, store_id, "/a.md", "kept", expected_sha256=None, actor=SESSION)
    await memory_stores.archive(store, store_id)
    with pytest.raises(StoreArchived):
        await memories.write(store, store_id, "/b.md", "new", expected_sha256=None, actor=SESSION)
    with pytest.raises(StoreArchived):
        await memories.write(store, store_id, "/a.md", "changed", expected_sha256=None, actor=SESSION)
    await memories.remove(store, store_id, "/a.md", expected_sha256=sha256("kept"), actor=SESSION)
    assert await memories.snapshot(store, store_id) == []


async def test_a_full_store_refuses_to_grow_but_not_to_shrink(store: Store, store_id: str) -> None:
    await memories.write(store, store_id, "/a.md", "abcdef", expected_sha256=None, actor=SESSION)
    key = memory_stores.index_key(store_id)
    # As if the store held its limit of bytes already, without a test writing 8 MiB.
    full = memories.MAX_STORE_BYTES
    await store.update(memory_stores.INDEX_KIND, key, lambda index: {**index, "total_bytes": full})
    with pytest.raises(RequestTooLarge, match=f"at most {full}"):
        await memories.write(store, store_id, "/b.md", "x", expected_sha256=None, actor=SESSION)
    with pytest.raises(RequestTooLarge):
        await memories.write(store, store_id, "/a.md", "abcdefg", expected_sha256=None, actor=SESSION)
    await memories.write(store, store_id, "/a.md", "abc", expected_sha256=None, actor=SESSION)
    await memories.write(store, store_id, "/empty.md", "", expected_sha256=None, actor=SESSION)

    # And as if it held its limit of memories.
    moment = "2030-01-01T00:00:00.000000Z"
    filler = {
        f"mem_filler{i}": memories._entry(f"/fill/{i}.md", "", f"memver_filler{i}", moment, moment)
        for i in range(memories.MAX_STORE_MEMORIES - 2)
    }
    await store.update(
        memory_stores.INDEX_KIND, key, lambda index: {**index, "memories": {**index["memories"], **filler}}
    )
    with pytest.raises(InvalidRequest, match=f"{memories.MAX_STORE_MEMORIES} memories"):
        await memories.write(store, store_id, "/one-more.md", "", expected_sha256=None, actor=SESSION)
    await memories.remove(store, store_id, "/empty.md", expected_sha256=None, actor=SESSION)
    await memories.write(store, store_id, "/one-more.md", "", expected_sha256=None, actor=SESSION)


async def test_of_concurrent_writers_expecting_the_same_content_exactly_one_wins(
    store: Store, store_id: str
) -> None:
    await memories.write(store, store_id, "/shared.md", "base", expected_sha256=None, actor=SESSION)
    won: list[str] = []
    lost: list[str] = []

    async def writer(number: int) -> None:
        content = f"writer {number}"
        try:
            await memories.write(
                store,
                store_id,
                "/shared.md",
                content,
                expected_sha256=sha256("base"),
                actor=session_actor(f"sesn_{number}"),
            )
        except PreconditionFailed:
            lost.append(content)
        else:
            won.append(content)

    async with anyio.create_task_group() as group:
        for number in range(16):
            group.start_soon(writer, number)
    assert len(won) == 1 and len(lost) == 15
    assert await memories.snapshot(store, store_id) == [("/shared.md", won[0], sha256(won[0]))]
    assert [v["operation"] for v in await _history(store, store_id)] == ["modified", "created"]


async def test_concurrent_creates_at_one_path_make_one_memory(store: Store, store_id: str) -> None:
    outcomes: list[str] = []

    async def creator(number: int) -> None:
        try:
            await memories.write(
                store, store_id, "/once.md", str(number), expected_sha256=ABSENT, actor=SESSION
            )
            outcomes.append("created")
        except PathConflict:
            outcomes.append("conflict")

    async with anyio.create_task_group() as group:
        for number in range(12):
            group.start_soon(creator, number)
    assert sorted(outcomes) == ["conflict"] * 11 + ["created"]
    assert len(await memories.snapshot(store, store_id)) == 1


async def test_versions_are_listed_newest_first_in_the_order_changes_committed(
    store: Store, store_id: str
) -> None:
    async def writer(number: int) -> None:
        await memories.write(
            store, store_id, f"/w/{number}.md", str(number), expected_sha256=None, actor=SESSION
        )

    async with anyio.create_task_group() as group:
        for number in range(20):
            group.start_soon(writer, number)
    history = await _history(store, store_id)
    assert len(history) == 20 and len({v["id"] for v in history}) == 20
    moments = [v["created_at"] for v in history]
    assert moments == sorted(moments, reverse=True)  # each stamped inside its commit
    assert (await memory_stores.load_index(store, store_id))["pending"] == []


async def test_a_version_a_crash_left_pending_is_written_out_by_the_next_read(
    store: Store, store_id: str
) -> None:
    # What a write does before it settles: commit the change with its version pending.
    change = memories._creating("/crash.md", "survives", SESSION, "mem_crash", "memver_crash")
    await store.update(
        memory_stores.INDEX_KIND,
        memory_stores.index_key(store_id),
        lambda i: change(i, "2030-01-01T00:00:00.000000Z")[0],
    )
    assert await store.get(memory_stores.VERSION_KIND, "memver_crash") is None
    assert await memories.snapshot(store, store_id) == [("/crash.md", "survives", sha256("survives"))]

    history = await _history(store, store_id)
    assert [(v["id"], v["content"]) for v in history] == [("memver_crash", "survives")]
    assert (await memory_stores.load_index(store, store_id))["pending"] == []
    await memory_stores.delete(store, store_id)
    assert await store.get(memory_stores.VERSION_KIND, "memver_crash") is None


async def test_a_sessions_writes_are_seen_through_the_sdk_as_the_sessions(
    gateway: ServerProcess, api_key: str
) -> None:
    with anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0) as client:
        mounted = client.beta.memory_stores.create(name="mounted by a session")
        store = await open_store(f"sqlite:///{gateway_data_dir(gateway) / 'tether.db'}")
        try:
            written = await memories.write(
                store,
                mounted.id,
                "/learned.md",
                "a lesson",
                expected_sha256=ABSENT,
                actor=session_actor("sesn_abc"),
            )
        finally:
            await store.close()
        memory = client.beta.memory_stores.memories.retrieve(written["id"], memory_store_id=mounted.id)
        assert (memory.path, memory.content) == ("/learned.md", "a lesson")
        versions = client.beta.memory_stores.memory_versions.list(mounted.id, session_id="sesn_abc").data
        assert [v.id for v in versions] == [memory.memory_version_id]
        assert versions[0].created_by is not None and versions[0].created_by.model_dump() == {
            "type": "session_actor",
            "session_id": "sesn_abc",
        }
        assert client.beta.memory_stores.memory_versions.list(mounted.id, session_id="sesn_other").data == []
