"""Memory stores: named containers of memories, their index, and the history of their changes.

Three collections. ``memory_store`` is exactly ``BetaManagedAgentsMemoryStore``. ``memory_index``
(one per store, keyed ``<store_id>.memories``) holds the store's live memories and is the one
document every memory write changes, atomically (``gateway.resources.memories``). It is created
before the store and deleted after it, so a store always has one; it also carries ``archived``,
set before the store's ``archived_at``, so from the moment an archive answers no write lands.
``memory_version`` holds one document per change, newest listed first.

A write records its version in the index's ``pending`` list in the same update as the change (an
outbox); ``settle`` copies pending versions to their own documents, in commit order, and drops
them from the list. Writes settle before they answer, history reads before they read, so an
answered write's version is never missing, even after a crash between the two steps.

Versions are kept until their store is deleted (the API promises "at least the retention
period"). Redacting one clears its content, digest, size and path; a live memory's content lives
in the index, so redacting its current version leaves the memory itself as it is.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway import ids
from gateway.errors import InvalidRequest, NotFound, TetherError
from gateway.resources import common
from gateway.schemas.common import apply_metadata_patch
from gateway.schemas.memory_stores import MemoryStoreCreate, MemoryStoreUpdate, memory_store_body
from gateway.store.base import Body, Page, Store

log = logging.getLogger("tether.memory_stores")

KIND = "memory_store"
INDEX_KIND = "memory_index"
VERSION_KIND = "memory_version"
ID_PREFIX = "memstore"
SWEEP_PAGE = 100


class StoreArchived(InvalidRequest):
    def __init__(self, store_id: str, refused: str) -> None:
        TetherError.__init__(
            self,
            f"memory store {store_id} is archived: {refused} (its memories can still be read and deleted)",
        )


def index_key(store_id: str) -> str:
    """Resource ids are unique across kinds, so the index gets its own."""
    return f"{store_id}.memories"


def new_index(store_id: str, created_at: str) -> Body:
    return {
        "id": index_key(store_id),
        "memory_store_id": store_id,
        "created_at": created_at,
        "archived": False,
        "memories": {},
        "total_bytes": 0,
        "pending": [],
    }


async def load_index(store: Store, store_id: str) -> Body:
    index = await store.get(INDEX_KIND, index_key(store_id))
    if index is None:
        raise NotFound(KIND, store_id)
    return index


async def settle(store: Store, store_id: str) -> Body:
    """The index once every version it holds pending has a document of its own (NotFound when
    the store is gone). Safe to run concurrently: a version is copied only once the one before it
    exists, so copies are inserted in commit order, and each only once."""
    index = await load_index(store, store_id)
    pending = index["pending"]
    if not pending:
        return index
    for version in pending:
        await _write_out(store, version)
    done = {version["id"] for version in pending}

    def drop(current: Body) -> Body:
        return {**current, "pending": [v for v in current["pending"] if v["id"] not in done]}

    settled = await store.update(INDEX_KIND, index_key(store_id), drop)
    if settled is None:  # deleted meanwhile: its sweep of versions may have run before these
        for version_id in done:
            await store.delete(VERSION_KIND, version_id)
        raise NotFound(KIND, store_id)
    return settled


async def _write_out(store: Store, version: Body) -> None:
    if await store.get(VERSION_KIND, version["id"]) is not None:
        return
    try:
        await store.insert(VERSION_KIND, version)
    except Exception:
        # A concurrent settle inserted the same id first; anything else is a real failure.
        if await store.get(VERSION_KIND, version["id"]) is None:
            raise


async def create(store: Store, request: MemoryStoreCreate) -> Body:
    store_id = ids.new_id(ID_PREFIX)
    moment = ids.timestamp()
    # The index goes first: a crash in between leaves an index no store names, never a store
    # without one.
    await store.insert(INDEX_KIND, new_index(store_id, moment))
    body = memory_store_body(store_id, request.name, request.description, request.metadata, moment)
    await store.insert(KIND, body)
    log.info("memory store %s created", store_id)
    return body


async def get(store: Store, store_id: str) -> Body:
    return await common.fetch(store, KIND, store_id)


async def update(store: Store, store_id: str, request: MemoryStoreUpdate) -> Body:
    """Name, description and metadata (a patch); ``updated_at`` moves only when one changes."""

    def change(current: Body) -> Body:
        if current.get("archived_at"):
            raise StoreArchived(store_id, "the store cannot be updated")
        updated = dict(current)
        if request.name is not None:
            updated["name"] = request.name
        if request.description is not None:
            updated["description"] = request.description
        if request.metadata is not None:
            try:
                updated["metadata"] = apply_metadata_patch(current["metadata"], request.metadata)
            except ValueError as exc:
                raise InvalidRequest(f"metadata: {exc}") from None
        if updated != current:
            updated["updated_at"] = ids.timestamp()
        return updated

    body = await store.update(KIND, store_id, change)
    if body is None:
        raise NotFound(KIND, store_id)
    return body


async def list_stores(
    store: Store,
    *,
    cursor: int | None,
    limit: int,
    include_archived: bool,
    created: tuple[str | None, str | None],
) -> Page:
    return await store.list_resources(
        KIND,
        cursor=cursor,
        limit=limit,
        include_archived=include_archived,
        created_gte=created[0],
        created_lte=created[1],
    )


async def archive(store: Store, store_id: str) -> Body:
    """Irreversible and idempotent. The index is marked first, so once the store reads as
    archived no memory write can commit."""
    await get(store, store_id)
    marked = await store.update(INDEX_KIND, index_key(store_id), lambda index: {**index, "archived": True})
    if marked is None:
        raise NotFound(KIND, store_id)
    body = await common.archive(store, KIND, store_id)
    log.info("memory store %s archived", store_id)
    return body


async def delete(store: Store, store_id: str) -> None:
    """The store, its memories and every version. The index goes first: from then on no write
    commits (and a crash leaves a store a repeated delete finishes); then the store; then the
    versions, one a write settles meanwhile included (``settle`` removes those it finds late)."""
    await get(store, store_id)
    await store.delete(INDEX_KIND, index_key(store_id))
    if not await store.delete(KIND, store_id):
        raise NotFound(KIND, store_id)
    removed = 0
    while True:
        page = await store.list_resources(
            VERSION_KIND,
            cursor=None,
            limit=SWEEP_PAGE,
            include_archived=True,
            equals={"memory_store_id": store_id},
        )
        if not page.items:
            break
        for version in page.items:
            removed += await store.delete(VERSION_KIND, version["id"])
    log.info("memory store %s deleted with %d version(s)", store_id, removed)


async def list_versions(
    store: Store,
    store_id: str,
    *,
    cursor: int | None,
    limit: int,
    equals: dict[str, Any],
    created: tuple[str | None, str | None],
) -> Page:
    """Newest first; ``equals`` filters by ``memory_id``, ``operation`` or the author's id."""
    await settle(store, store_id)
    return await store.list_resources(
        VERSION_KIND,
        cursor=cursor,
        limit=limit,
        include_archived=True,
        equals={**equals, "memory_store_id": store_id},
        created_gte=created[0],
        created_lte=created[1],
    )


async def get_version(store: Store, store_id: str, version_id: str) -> Body:
    await settle(store, store_id)
    body = await store.get(VERSION_KIND, version_id)
    if body is None or body["memory_store_id"] != store_id:
        raise NotFound("memory_version", version_id)
    return body


async def redact(store: Store, store_id: str, version_id: str, actor: Body | None) -> Body:
    """Clear a version's content, digest, size and path for good; idempotent (the first
    ``redacted_at`` and ``redacted_by`` stay). Allowed in an archived store."""
    await get_version(store, store_id, version_id)
    moment = ids.timestamp()

    def wipe(current: Body) -> Body:
        if current.get("redacted_at"):
            return current
        cleared = {"content": None, "content_sha256": None, "content_size_bytes": None, "path": None}
        return {**current, **cleared, "redacted_at": moment, "redacted_by": actor}

    body = await store.update(VERSION_KIND, version_id, wipe)
    if body is None:
        raise NotFound("memory_version", version_id)
    log.info("memory store %s: version %s redacted", store_id, version_id)
    return body
