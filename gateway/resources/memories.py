"""Memories: the text documents of a memory store, addressed by path, each change a version.

A store's live memories (path, content, digest, size, current version) are its index
(``memory_stores.INDEX_KIND``), and every create, update, rename and delete is one atomic
``Store.update`` of that document that also records the change's version: so a path is never
held twice, a ``content_sha256`` precondition is checked against the very content it replaces,
and the store's limits hold, whatever runs concurrently, on SQLite and PostgreSQL alike. A path
is a file in the sandbox's mount, so it may not also be another memory's directory.

``snapshot``, ``write`` and ``remove`` are for the rest of the gateway: a sandbox mounts a store
from a snapshot and writes back what its session changed, with the API's precondition rules and
the session recorded as the author of each version.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gateway import ids
from gateway.errors import Conflict, InvalidRequest, NotFound, RequestTooLarge
from gateway.resources.memory_stores import (
    INDEX_KIND,
    KIND,
    StoreArchived,
    index_key,
    load_index,
    settle,
)
from gateway.schemas.memory_stores import (
    MAX_MEMORY_BYTES,
    check_actor,
    digest,
    memory_body,
    memory_prefix_body,
    memory_version_body,
    path_problem,
    sha256_problem,
)
from gateway.store.base import Body, Store

MEMORY_PREFIX = "mem"
VERSION_PREFIX = "memver"
MAX_STORE_BYTES = 8 * 1024 * 1024
"""All of a store's content: the index holding it is rewritten by every write."""
MAX_STORE_MEMORIES = 2000
_REFUSED = "its memories cannot be created or changed"
ABSENT = ""
"""``expected_sha256`` for ``write``: there must be no memory at the path yet."""

Change = Callable[[Body, str], tuple[Body, str, Body | None]]
"""Given the index and the moment, the new index, the memory's id and its entry (None: gone)."""


class PathConflict(Conflict):
    """The path is taken, or is a directory of (or lies under) another memory's path."""

    error_type = "memory_path_conflict_error"

    def __init__(self, message: str, memory_id: str) -> None:
        super().__init__(message)
        self.memory_id = memory_id

    def extra(self) -> dict[str, object]:
        return {"conflicting_memory_id": self.memory_id}


class PreconditionFailed(Conflict):
    """The memory's current ``content_sha256`` is not the one the caller expected."""

    error_type = "memory_precondition_failed_error"


def _check_path(path: str) -> None:
    problem = path_problem(path)
    if problem is not None:
        raise InvalidRequest(f"path: {path!r} {problem}")


def _check_content(content: str) -> None:
    size = len(content.encode())
    if size > MAX_MEMORY_BYTES:
        raise RequestTooLarge(f"content: {size} bytes; a memory holds at most {MAX_MEMORY_BYTES} bytes")


def _check_expected(expected: str | None, allow_absent: bool = False) -> None:
    if expected is None or (allow_absent and expected == ABSENT):
        return
    problem = sha256_problem(expected)
    if problem is not None:
        raise InvalidRequest(f"expected_content_sha256: {problem}")


def _find(index: Body, path: str) -> str | None:
    return next((mid for mid, entry in index["memories"].items() if entry["path"] == path), None)


def _check_tree(index: Body, path: str, memory_id: str | None) -> None:
    """A path is a file in the sandbox's mount: it may not be taken, nor be another memory's
    directory, nor lie under another memory (a file cannot also be a directory)."""
    for other_id, entry in index["memories"].items():
        other = entry["path"]
        if other_id == memory_id:
            continue
        if other == path:
            raise PathConflict(f"path: {path!r} is taken by memory {other_id}", other_id)
        if other.startswith(path + "/"):
            raise PathConflict(
                f"path: {path!r} is a directory holding memory {other_id} ({other!r})", other_id
            )
        if path.startswith(other + "/"):
            raise PathConflict(f"path: {path!r} lies under memory {other_id} ({other!r}), a file", other_id)


def _entry(path: str, content: str, version_id: str, created_at: str, moment: str) -> Body:
    return {
        "path": path,
        "content": content,
        "content_sha256": digest(content),
        "content_size_bytes": len(content.encode()),
        "memory_version_id": version_id,
        "created_at": created_at,
        "updated_at": moment,
    }


def _recorded(
    index: Body, memory_id: str, entry: Body | None, operation: str, moment: str, actor: Body | None
) -> Body:
    """The index with the memory now ``entry`` (None: deleted), within the store's limits, and
    the version recording the change pending."""
    before = index["memories"].get(memory_id)
    memories = {key: value for key, value in index["memories"].items() if key != memory_id}
    if entry is not None:
        memories[memory_id] = entry
    size = (entry or {}).get("content_size_bytes", 0) - (before or {}).get("content_size_bytes", 0)
    total = index["total_bytes"] + size
    if size > 0 and total > MAX_STORE_BYTES:
        raise RequestTooLarge(
            f"content: the memory store would hold {total} bytes; a store holds at most {MAX_STORE_BYTES}"
        )
    if before is None and len(memories) > MAX_STORE_MEMORIES:
        raise InvalidRequest(f"the memory store already holds {MAX_STORE_MEMORIES} memories, its limit")
    current = entry or before
    assert current is not None
    version_id = entry["memory_version_id"] if entry else ids.new_id(VERSION_PREFIX)
    content = entry["content"] if entry else None
    version = memory_version_body(
        version_id, index["memory_store_id"], memory_id, operation, current["path"], content, moment, actor
    )
    return {**index, "memories": memories, "total_bytes": total, "pending": [*index["pending"], version]}


def _creating(path: str, content: str, actor: Body | None, memory_id: str, version_id: str) -> Change:
    def change(index: Body, moment: str) -> tuple[Body, str, Body | None]:
        if index["archived"]:
            raise StoreArchived(index["memory_store_id"], _REFUSED)
        _check_tree(index, path, None)
        entry = _entry(path, content, version_id, moment, moment)
        return _recorded(index, memory_id, entry, "created", moment, actor), memory_id, entry

    return change


def _modifying(
    memory_id: str,
    content: str | None,
    path: str | None,
    expected: str | None,
    actor: Body | None,
    version_id: str,
) -> Change:
    """Content, path or both; a change that changes nothing records no version."""

    def change(index: Body, moment: str) -> tuple[Body, str, Body | None]:
        current = index["memories"].get(memory_id)
        if current is None:
            raise NotFound("memory", memory_id)
        if index["archived"]:
            raise StoreArchived(index["memory_store_id"], _REFUSED)
        _check_precondition(current, expected, memory_id)
        new_path = current["path"] if path is None else path
        new_content = current["content"] if content is None else content
        if (new_path, new_content) == (current["path"], current["content"]):
            return index, memory_id, current
        if new_path != current["path"]:
            _check_tree(index, new_path, memory_id)
        entry = _entry(new_path, new_content, version_id, current["created_at"], moment)
        return _recorded(index, memory_id, entry, "modified", moment, actor), memory_id, entry

    return change


def _deleting(memory_id: str, expected: str | None, actor: Body | None) -> Change:
    """Allowed in an archived store too; the ``deleted`` version keeps the path it had."""

    def change(index: Body, moment: str) -> tuple[Body, str, Body | None]:
        current = index["memories"].get(memory_id)
        if current is None:
            raise NotFound("memory", memory_id)
        _check_precondition(current, expected, memory_id)
        return _recorded(index, memory_id, None, "deleted", moment, actor), memory_id, None

    return change


def _check_precondition(current: Body, expected: str | None, memory_id: str) -> None:
    if expected is not None and expected != current["content_sha256"]:
        raise PreconditionFailed(
            f"memory {memory_id} ({current['path']!r}) has content_sha256 {current['content_sha256']}, "
            f"not the expected {expected or '(no memory)'}; read it again and retry"
        )


def _by_path(path: str, expected: str | None, write: Callable[[str], Change], create: Change) -> Change:
    """``write`` the memory at ``path``, or ``create`` one there; ``expected`` as for ``write``."""

    def change(index: Body, moment: str) -> tuple[Body, str, Body | None]:
        memory_id = _find(index, path)
        if memory_id is None:
            if expected:
                raise PreconditionFailed(
                    f"path: no memory at {path!r}, not one with content_sha256 {expected}"
                )
            return create(index, moment)
        if expected == ABSENT:
            raise PathConflict(f"path: {path!r} is taken by memory {memory_id}", memory_id)
        return write(memory_id)(index, moment)

    return change


async def _commit(store: Store, store_id: str, change: Change) -> tuple[str, Body | None]:
    """Apply ``change`` to the index in one atomic update, then write out the version it made."""
    outcome: list[tuple[str, Body | None]] = []

    def mutate(index: Body) -> Body:
        updated, memory_id, entry = change(index, ids.timestamp())
        outcome[:] = [(memory_id, entry)]
        return updated

    if await store.update(INDEX_KIND, index_key(store_id), mutate) is None:
        raise NotFound(KIND, store_id)
    await settle(store, store_id)
    return outcome[0]


async def create(
    store: Store, store_id: str, path: str, content: str, actor: Body | None, view: str = "basic"
) -> Body:
    """A new memory at a free ``path`` (``PathConflict`` when it is taken)."""
    memory_id, entry = await _put(store, store_id, path, content, ABSENT, actor)
    return memory_body(store_id, memory_id, entry, view)


async def update(
    store: Store,
    store_id: str,
    memory_id: str,
    *,
    content: str | None,
    path: str | None,
    expected_sha256: str | None,
    actor: Body | None,
    view: str = "basic",
) -> Body:
    """Change a memory's content, path or both, if its content still hashes to ``expected``."""
    if path is not None:
        _check_path(path)
    if content is not None:
        _check_content(content)
    _check_expected(expected_sha256)
    version_id = ids.new_id(VERSION_PREFIX)
    change = _modifying(memory_id, content, path, expected_sha256, actor, version_id)
    _, entry = await _commit(store, store_id, change)
    assert entry is not None
    return memory_body(store_id, memory_id, entry, view)


async def delete(
    store: Store, store_id: str, memory_id: str, *, expected_sha256: str | None, actor: Body | None
) -> None:
    _check_expected(expected_sha256)
    await _commit(store, store_id, _deleting(memory_id, expected_sha256, actor))


async def retrieve(store: Store, store_id: str, memory_id: str, view: str) -> Body:
    entry = (await load_index(store, store_id))["memories"].get(memory_id)
    if entry is None:
        raise NotFound("memory", memory_id)
    return memory_body(store_id, memory_id, entry, view)


async def listing(
    store: Store, store_id: str, *, prefix: str, depth: int, after: str | None, limit: int, view: str
) -> tuple[list[Body], bool]:
    """One page of the memories under ``prefix``, by path; with ``depth``, those deeper are rolled
    up into ``memory_prefix`` items. Items after the path ``after``; and whether more follow."""
    index = await load_index(store, store_id)
    items: dict[str, str | None] = {}
    for memory_id, entry in index["memories"].items():
        path = entry["path"]
        if not path.startswith(prefix):
            continue
        below = path[len(prefix) :].split("/")
        if depth and len(below) > depth:
            items[prefix + "/".join(below[:depth]) + "/"] = None
        else:
            items[path] = memory_id
    ordered = sorted(key for key in items if after is None or key > after)
    page = []
    for key in ordered[:limit]:
        memory_id = items[key]
        if memory_id is None:
            page.append(memory_prefix_body(key))
        else:
            page.append(memory_body(store_id, memory_id, index["memories"][memory_id], view))
    return page, len(ordered) > limit


async def snapshot(store: Store, memory_store_id: str) -> list[tuple[str, str, str]]:
    """``(path, content, content_sha256)`` of every live memory, by path: what a sandbox mounts."""
    index = await load_index(store, memory_store_id)
    return sorted((e["path"], e["content"], e["content_sha256"]) for e in index["memories"].values())


async def write(
    store: Store,
    memory_store_id: str,
    path: str,
    content: str,
    *,
    expected_sha256: str | None,
    actor: Body | None,
) -> Body:
    """Create or replace the memory at ``path`` (its ``BetaManagedAgentsMemory``, ``view=basic``).

    ``expected_sha256``: None writes unconditionally; a digest requires the memory there to have
    that content (``PreconditionFailed`` otherwise, also when there is none); ``ABSENT`` requires
    that there is none (``PathConflict`` otherwise, as ``memories.create``). Writing the content a
    memory already has records no version. ``actor`` is the author, e.g. ``session_actor(id)``.
    """
    memory_id, entry = await _put(store, memory_store_id, path, content, expected_sha256, actor)
    return memory_body(memory_store_id, memory_id, entry, "basic")


async def _put(
    store: Store, store_id: str, path: str, content: str, expected: str | None, actor: Body | None
) -> tuple[str, Body]:
    _check_path(path)
    _check_content(content)
    _check_expected(expected, allow_absent=True)
    check_actor(actor)
    written, entry = await _commit(store, store_id, _editing(path, content, expected, actor))
    assert entry is not None
    return written, entry


Edit = tuple[str, str | None, str | None]
"""``(path, content or None to remove, expected_sha256 as for write/remove)``."""


async def apply_many(
    store: Store, memory_store_id: str, edits: Sequence[Edit], actor: Body | None
) -> dict[str, Exception]:
    """``write``/``remove`` each edit in order, all in one atomic update of the index (one
    rewrite of it, not one per edit: a sandbox may change thousands of files in one call). An
    edit that fails its precondition (``PreconditionFailed``, ``PathConflict``), a limit, or finds
    nothing to remove (``NotFound``) is left out; the answer maps each such path to its error."""
    check_actor(actor)
    refused: dict[str, Exception] = {}
    changes: list[tuple[str, Change]] = []
    for path, content, expected in edits:
        try:
            _check_path(path)
            _check_expected(expected, allow_absent=True)
            if content is not None:
                _check_content(content)
        except (InvalidRequest, RequestTooLarge) as exc:
            refused[path] = exc
            continue
        changes.append((path, _editing(path, content, expected, actor)))
    applied: dict[str, Exception] = {}

    def mutate(index: Body) -> Body:
        applied.clear()
        moment = ids.timestamp()
        for path, change in changes:
            try:
                index = change(index, moment)[0]
            except (Conflict, NotFound, InvalidRequest, RequestTooLarge) as exc:
                applied[path] = exc
        return index

    if changes:
        if await store.update(INDEX_KIND, index_key(memory_store_id), mutate) is None:
            raise NotFound(KIND, memory_store_id)
        await settle(store, memory_store_id)
    return refused | applied


def _editing(path: str, content: str | None, expected: str | None, actor: Body | None) -> Change:
    if content is None:
        return _removing(path, expected, actor)
    version_id = ids.new_id(VERSION_PREFIX)

    def replace(existing: str) -> Change:
        return _modifying(existing, content, None, expected, actor, version_id)

    return _by_path(
        path, expected, replace, _creating(path, content, actor, ids.new_id(MEMORY_PREFIX), version_id)
    )


def _removing(path: str, expected: str | None, actor: Body | None) -> Change:
    def change(index: Body, moment: str) -> tuple[Body, str, Body | None]:
        memory_id = _find(index, path)
        if memory_id is None:
            raise NotFound("memory at path", path)
        return _deleting(memory_id, expected, actor)(index, moment)

    return change


async def remove(
    store: Store, memory_store_id: str, path: str, *, expected_sha256: str | None, actor: Body | None
) -> None:
    """Delete the memory at ``path`` (NotFound when there is none), if its content still hashes
    to ``expected_sha256`` (None: unconditionally); a ``deleted`` version names ``actor``."""
    _check_path(path)
    _check_expected(expected_sha256, allow_absent=True)
    check_actor(actor)
    await _commit(store, memory_store_id, _removing(path, expected_sha256, actor))
