"""``client.beta.memory_stores``, ``.memories`` and ``.memory_versions`` against a gateway process.

Stores: created, listed newest first, patched, archived (memories then read and deleted only) and
deleted. Memories: addressed by id, created at a free path, listed by path under a prefix and to a
depth, renamed, and changed or deleted only while their content hashes to the ``content_sha256``
given (409 ``memory_precondition_failed_error``; of concurrent writers exactly one wins). Every
change is a version naming its author; bad paths are 400s naming them, content over 100 kB a 413.
Every answer must parse as the SDK's own type with no field it lacks (``support.strict_answers``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsMemoryStore
from anthropic.types.beta.memory_stores import BetaManagedAgentsAPIActor, BetaManagedAgentsPreconditionParam

from tests.support.memory_stores import create_key, error_of, sha256, strict_answers
from tests.support.processes import ServerProcess
from tests.support.strict_answers import StrictAnswers, sdk


@pytest.fixture
def answers() -> Iterator[StrictAnswers]:
    with strict_answers() as checker:
        yield checker


@pytest.fixture
def client(gateway: ServerProcess, api_key: str, answers: StrictAnswers) -> Iterator[anthropic.Anthropic]:
    """Every answer this client receives goes through ``answers``."""
    with sdk(gateway.url, api_key, answers) as client:
        yield client


@pytest.fixture
def store(client: anthropic.Anthropic) -> BetaManagedAgentsMemoryStore:
    return client.beta.memory_stores.create(name="Test Store", description="For one test.")


def test_a_store_is_created_retrieved_updated_and_deleted(client: anthropic.Anthropic) -> None:
    stores = client.beta.memory_stores
    store = stores.create(
        name="User Preferences", description="Per-user prefs.", metadata={"user": "u1", "team": "t"}
    )
    assert store.id.startswith("memstore_") and store.type == "memory_store"
    assert (store.name, store.description, store.metadata) == (
        "User Preferences",
        "Per-user prefs.",
        {"user": "u1", "team": "t"},
    )
    assert store.archived_at is None and store.created_at == store.updated_at
    assert stores.retrieve(store.id) == store

    updated = stores.update(store.id, name="Prefs", metadata={"team": None, "tier": "gold"})
    assert (updated.name, updated.description) == ("Prefs", "Per-user prefs.")
    assert updated.metadata == {"user": "u1", "tier": "gold"} and updated.updated_at > store.updated_at
    assert stores.update(store.id, description="Per-user prefs.") == updated  # nothing changed

    deleted = stores.delete(store.id)
    assert (deleted.id, deleted.type) == (store.id, "memory_store_deleted")
    with pytest.raises(anthropic.NotFoundError):
        stores.retrieve(store.id)
    with pytest.raises(anthropic.NotFoundError):
        stores.memories.list(store.id)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"name": ""}, "name"),
        ({"name": "two\nlines"}, "name"),
        ({"name": "x" * 256}, "name"),
        ({"name": "ok", "description": "d" * 1025}, "description"),
        ({"name": "ok", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"name": "ok", "extra_body": {"colour": "red"}}, "colour"),
    ],
)
def test_a_store_with_a_bad_field_is_refused_naming_it(
    client: anthropic.Anthropic, fields: dict[str, object], named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.memory_stores.create(**fields)  # type: ignore[arg-type]
    assert named in error_of(refused.value)["message"]


def test_stores_are_listed_newest_first_in_pages_without_the_archived(client: anthropic.Anthropic) -> None:
    stores = client.beta.memory_stores
    made = [stores.create(name=f"page {i}") for i in range(5)]
    stores.archive(made[1].id)
    since, until = made[0].created_at, made[-1].created_at
    mine = {store.id for store in made}

    listed = [store.id for store in stores.list(limit=2, created_at_gte=since, created_at_lte=until)]
    assert len(listed) == len(set(listed))
    assert [i for i in listed if i in mine] == [made[4].id, made[3].id, made[2].id, made[0].id]
    with_archived = [
        s.id for s in stores.list(limit=2, include_archived=True, created_at_gte=since, created_at_lte=until)
    ]
    assert [i for i in with_archived if i in mine] == [store.id for store in reversed(made)]


def test_an_archived_store_is_read_and_deleted_from_but_not_written(client: anthropic.Anthropic) -> None:
    stores = client.beta.memory_stores
    store = stores.create(name="to archive")
    memory = stores.memories.create(store.id, path="/keep.md", content="kept")
    archived = stores.archive(store.id)
    assert archived.archived_at is not None and archived.updated_at == archived.archived_at
    assert stores.archive(store.id) == archived  # idempotent

    for refused_write in (
        lambda: stores.update(store.id, name="renamed"),
        lambda: stores.memories.create(store.id, path="/new.md", content="x"),
        lambda: stores.memories.update(memory.id, memory_store_id=store.id, content="changed"),
    ):
        with pytest.raises(anthropic.BadRequestError) as refused:
            refused_write()
        assert "archived" in error_of(refused.value)["message"]
    assert stores.memories.retrieve(memory.id, memory_store_id=store.id).content == "kept"
    version = stores.memory_versions.list(store.id).data[0]
    assert stores.memory_versions.redact(version.id, memory_store_id=store.id).redacted_at is not None
    stores.memories.delete(memory.id, memory_store_id=store.id)
    assert stores.delete(store.id).id == store.id


def test_a_memory_is_created_read_renamed_and_deleted_by_id(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories = client.beta.memory_stores.memories
    content = "Always use tabs \u2014 d\u00e9j\u00e0 vu.\n"
    created = memories.create(store.id, path="/preferences/formatting.md", content=content)
    assert created.id.startswith("mem_") and created.memory_version_id.startswith("memver_")
    assert created.content is None  # create answers view=basic
    assert (created.content_sha256, created.content_size_bytes) == (sha256(content), len(content.encode()))
    assert (created.memory_store_id, created.path) == (store.id, "/preferences/formatting.md")

    read = memories.retrieve(created.id, memory_store_id=store.id)
    assert read.content == content and read.model_copy(update={"content": None}) == created
    assert memories.retrieve(created.id, memory_store_id=store.id, view="basic").content is None

    renamed = memories.update(
        created.id, memory_store_id=store.id, path="/archive/formatting.md", view="full"
    )
    assert (renamed.id, renamed.path, renamed.content) == (created.id, "/archive/formatting.md", content)
    assert renamed.memory_version_id != created.memory_version_id
    assert renamed.created_at == created.created_at and renamed.updated_at > created.updated_at
    empty = memories.update(created.id, memory_store_id=store.id, content="")
    assert (empty.content_size_bytes, empty.content_sha256) == (0, sha256(""))

    deleted = memories.delete(created.id, memory_store_id=store.id)
    assert (deleted.id, deleted.type) == (created.id, "memory_deleted")
    with pytest.raises(anthropic.NotFoundError):
        memories.retrieve(created.id, memory_store_id=store.id)
    with pytest.raises(anthropic.NotFoundError):
        memories.retrieve(created.id, memory_store_id=client.beta.memory_stores.create(name="other").id)


def test_a_taken_path_is_a_path_conflict_naming_the_memory_holding_it(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories = client.beta.memory_stores.memories
    notes = memories.create(store.id, path="/notes/todo.md", content="one")
    other = memories.create(store.id, path="/other.md", content="two")
    for path in ("/notes/todo.md", "/notes", "/notes/todo.md/deeper.md"):
        with pytest.raises(anthropic.ConflictError) as refused:
            memories.create(store.id, path=path, content="three")
        error = error_of(refused.value)
        assert error["type"] == "memory_path_conflict_error" and error["conflicting_memory_id"] == notes.id
        assert repr(path) in error["message"]
    with pytest.raises(anthropic.ConflictError) as refused:
        memories.update(other.id, memory_store_id=store.id, path="/notes/todo.md")
    assert error_of(refused.value)["conflicting_memory_id"] == notes.id
    assert memories.retrieve(other.id, memory_store_id=store.id).path == "/other.md"
    assert memories.create(store.id, path="/Notes/todo.md", content="case differs").path == "/Notes/todo.md"


def test_memories_are_listed_by_path_under_a_prefix_to_a_depth_in_pages(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories = client.beta.memory_stores.memories
    paths = ["/notes/b.md", "/top.md", "/notes/a.md", "/notes/deep/er/c.md", "/notes-archive/x.md"]
    for path in paths:
        memories.create(store.id, path=path, content=f"content of {path}")

    everything = list(memories.list(store.id, limit=2))
    assert [item.path for item in everything] == sorted(paths)
    assert all(item.type == "memory" and item.content is None for item in everything)
    under = [item.path for item in memories.list(store.id, path_prefix="/notes/", limit=1)]
    assert under == ["/notes/a.md", "/notes/b.md", "/notes/deep/er/c.md"]
    children = [(item.type, item.path) for item in memories.list(store.id, path_prefix="/notes/", depth=1)]
    assert children == [
        ("memory", "/notes/a.md"),
        ("memory", "/notes/b.md"),
        ("memory_prefix", "/notes/deep/"),
    ]
    top = [(item.type, item.path) for item in memories.list(store.id, depth=1, limit=2)]
    assert top == [
        ("memory_prefix", "/notes-archive/"),
        ("memory_prefix", "/notes/"),
        ("memory", "/top.md"),
    ]
    full = memories.list(store.id, path_prefix="/notes/deep/", view="full").data
    assert [item.content for item in full] == ["content of /notes/deep/er/c.md"]  # type: ignore[union-attr]
    assert memories.list(store.id, path_prefix="/nothing/").data == []
    for bad in ("notes/", "/notes", "/../"):
        with pytest.raises(anthropic.BadRequestError) as refused:
            memories.list(store.id, path_prefix=bad)
        assert "path_prefix" in error_of(refused.value)["message"]


def test_a_full_view_list_holds_at_most_twenty_memories_a_page(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories = client.beta.memory_stores.memories
    for i in range(21):
        memories.create(store.id, path=f"/m/{i:02}.md", content=str(i))
    page = memories.list(store.id, view="full", limit=100)
    assert len(page.data) == 20 and page.next_page
    assert len(memories.list(store.id, limit=100).data) == 21


def test_a_content_sha256_precondition_guards_updates_and_deletes(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories = client.beta.memory_stores.memories
    memory = memories.create(store.id, path="/facts.md", content="v1")
    stale: BetaManagedAgentsPreconditionParam = {"type": "content_sha256", "content_sha256": sha256("v0")}
    with pytest.raises(anthropic.ConflictError) as refused:
        memories.update(memory.id, memory_store_id=store.id, content="v2", precondition=stale)
    assert error_of(refused.value)["type"] == "memory_precondition_failed_error"
    current: BetaManagedAgentsPreconditionParam = {
        "type": "content_sha256",
        "content_sha256": memory.content_sha256,
    }
    updated = memories.update(memory.id, memory_store_id=store.id, content="v2", precondition=current)
    assert updated.content_sha256 == sha256("v2")

    with pytest.raises(anthropic.ConflictError) as refused:
        memories.delete(memory.id, memory_store_id=store.id, expected_content_sha256=sha256("v1"))
    assert error_of(refused.value)["type"] == "memory_precondition_failed_error"
    assert memories.retrieve(memory.id, memory_store_id=store.id).content == "v2"
    with pytest.raises(anthropic.BadRequestError):
        memories.delete(memory.id, memory_store_id=store.id, expected_content_sha256=sha256("v2").upper())
    memories.delete(memory.id, memory_store_id=store.id, expected_content_sha256=sha256("v2"))
    assert memories.list(store.id).data == []


def test_of_concurrent_updates_expecting_the_same_content_exactly_one_wins(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories = client.beta.memory_stores.memories
    memory = memories.create(store.id, path="/counter.md", content="0")
    expect: BetaManagedAgentsPreconditionParam = {
        "type": "content_sha256",
        "content_sha256": memory.content_sha256,
    }

    def attempt(writer: int) -> str | None:
        try:
            memories.update(
                memory.id, memory_store_id=store.id, content=f"writer {writer}", precondition=expect
            )
        except anthropic.ConflictError as exc:
            assert error_of(exc)["type"] == "memory_precondition_failed_error"
            return None
        return f"writer {writer}"

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(attempt, range(12)))
    winners = [outcome for outcome in outcomes if outcome is not None]
    assert len(winners) == 1
    assert memories.retrieve(memory.id, memory_store_id=store.id).content == winners[0]
    history = client.beta.memory_stores.memory_versions.list(store.id, memory_id=memory.id).data
    assert [version.operation for version in history] == ["modified", "created"]


def test_every_change_is_a_version_naming_its_author_listed_newest_first(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore, gateway: ServerProcess, api_key: str
) -> None:
    key = create_key(gateway, api_key, "developer")
    with anthropic.Anthropic(base_url=gateway.url, api_key=key["key"], max_retries=0) as developer:
        memories = developer.beta.memory_stores.memories
        memory = memories.create(store.id, path="/a.md", content="first")
        memories.update(memory.id, memory_store_id=store.id, content="second")
        memories.update(memory.id, memory_store_id=store.id, content="second")  # no change, no version
        memories.update(memory.id, memory_store_id=store.id, path="/b.md")
        memories.delete(memory.id, memory_store_id=store.id)
    unattributed = client.beta.memory_stores.memories.create(
        store.id, path="/c.md", content="by the configured key"
    )

    versions = client.beta.memory_stores.memory_versions
    history = versions.list(store.id, memory_id=memory.id).data
    assert [(v.operation, v.path, v.content) for v in history] == [
        ("deleted", "/b.md", None),
        ("modified", "/b.md", None),
        ("modified", "/a.md", None),
        ("created", "/a.md", None),
    ]
    assert [v.content_sha256 for v in history] == [None, sha256("second"), sha256("second"), sha256("first")]
    assert all(
        v.created_by == BetaManagedAgentsAPIActor(type="api_actor", api_key_id=key["id"]) for v in history
    )
    assert memory.memory_version_id == history[-1].id
    assert all(v.memory_id == memory.id and v.memory_store_id == store.id for v in history)

    by_key = versions.list(store.id, api_key_id=key["id"], operation="modified").data
    assert [v.id for v in by_key] == [history[1].id, history[2].id]
    newest = versions.list(store.id).data[0]
    assert (newest.memory_id, newest.created_by) == (unattributed.id, None)  # a configured key has no id
    full = versions.retrieve(history[2].id, memory_store_id=store.id)
    assert (full.content, full.content_size_bytes) == ("second", 6)
    assert versions.retrieve(history[2].id, memory_store_id=store.id, view="basic").content is None
    assert [v.content for v in versions.list(store.id, memory_id=memory.id, view="full").data] == [
        None,
        "second",
        "second",
        "first",
    ]
    with pytest.raises(anthropic.BadRequestError):
        versions.list(store.id, operation="renamed")  # type: ignore[arg-type]


def test_redacting_a_version_clears_it_for_good_but_not_the_memory(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories, versions = client.beta.memory_stores.memories, client.beta.memory_stores.memory_versions
    memory = memories.create(store.id, path="/secret.md", content="api key sk-123")
    redacted = versions.redact(memory.memory_version_id, memory_store_id=store.id)
    assert (redacted.content, redacted.content_sha256, redacted.content_size_bytes, redacted.path) == (
        None,
    ) * 4
    assert redacted.redacted_at is not None and redacted.created_by == redacted.redacted_by is None
    assert versions.retrieve(memory.memory_version_id, memory_store_id=store.id) == redacted
    assert versions.redact(memory.memory_version_id, memory_store_id=store.id) == redacted  # idempotent
    assert memories.retrieve(memory.id, memory_store_id=store.id).content == "api key sk-123"
    other = client.beta.memory_stores.create(name="other")
    with pytest.raises(anthropic.NotFoundError):
        versions.retrieve(memory.memory_version_id, memory_store_id=other.id)
    with pytest.raises(anthropic.NotFoundError):
        versions.redact("memver_missing", memory_store_id=store.id)


@pytest.mark.parametrize(
    "path",
    [
        "notes/relative.md",
        "/notes/../escape.md",
        "/notes/./here.md",
        "/notes//empty.md",
        "/notes/",
        "/",
        "/nul\x00byte.md",
        "/bell\x07.md",
        "/zero\u200bwidth.md",
        "/line\u2028separator.md",
        "/cafe\u0301.md",
        "/" + "/".join(["d"] * 21),
        "/" + "x" * 1024,
    ],
)
def test_a_bad_path_is_refused_naming_it(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore, path: str
) -> None:
    memories = client.beta.memory_stores.memories
    with pytest.raises(anthropic.BadRequestError) as refused:
        memories.create(store.id, path=path, content="x")
    message = error_of(refused.value)["message"]
    assert message.startswith("path: ") and (repr(path) in message or repr(path[:80]) in message), message
    memory = memories.create(store.id, path="/fine.md", content="x")
    with pytest.raises(anthropic.BadRequestError) as refused:
        memories.update(memory.id, memory_store_id=store.id, path=path)
    assert error_of(refused.value)["message"].startswith("path: ")
    assert [m.path for m in memories.list(store.id)] == ["/fine.md"]


def test_content_over_100_kb_is_too_large(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore
) -> None:
    memories = client.beta.memory_stores.memories
    most = "\u00e9" * (102_400 // 2)  # two bytes each in UTF-8: exactly the limit
    memory = memories.create(store.id, path="/big.md", content=most)
    assert memory.content_size_bytes == 102_400
    for refused_write in (
        lambda: memories.create(store.id, path="/bigger.md", content=most + "x"),
        lambda: memories.update(memory.id, memory_store_id=store.id, content=most + "x"),
    ):
        with pytest.raises(anthropic.APIStatusError) as refused:
            refused_write()
        assert refused.value.status_code == 413
        assert "102400" in error_of(refused.value)["message"]
    assert memories.retrieve(memory.id, memory_store_id=store.id).content == most


def test_a_reader_key_reads_memories_and_a_developer_key_writes_them(
    client: anthropic.Anthropic, store: BetaManagedAgentsMemoryStore, gateway: ServerProcess, api_key: str
) -> None:
    memory = client.beta.memory_stores.memories.create(store.id, path="/shared.md", content="shared")
    reader_key = create_key(gateway, api_key, "reader")["key"]
    with anthropic.Anthropic(base_url=gateway.url, api_key=reader_key, max_retries=0) as reader:
        assert (
            reader.beta.memory_stores.memories.retrieve(memory.id, memory_store_id=store.id).content
            == "shared"
        )
        assert [m.path for m in reader.beta.memory_stores.memories.list(store.id)] == ["/shared.md"]
        with pytest.raises(anthropic.PermissionDeniedError):
            reader.beta.memory_stores.memories.create(store.id, path="/mine.md", content="no")
        with pytest.raises(anthropic.PermissionDeniedError):
            reader.beta.memory_stores.create(name="no")
