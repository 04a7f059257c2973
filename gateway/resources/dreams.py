"""Dreams: jobs that read a memory store and past sessions and write a reorganised store.

One collection, ``dream``, whose documents are exactly ``BetaDream``. This module keeps their
lifecycle; running a dream is a ``DreamRunner``'s job, which the API tells about new and
canceled dreams and which reports progress through ``advance``.

    pending -> running -> completed | failed        (the runner, through ``advance``)
    pending | running -> canceled                   (``cancel``)

``completed``, ``failed`` and ``canceled`` are final: the status, outputs, error and end time
never change again. Only ``usage`` may still move, and only after a cancel (the SDK: counts
"stop changing once its status is completed or failed. After a cancel, they can keep changing").
Only a final dream may be archived.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from gateway import ids
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.resources import common, memory_stores, sessions
from gateway.schemas.dreams import FINAL_STATUSES, STATUSES, DreamChanges, DreamCreate, dream_body
from gateway.store.base import Body, Page, Store

log = logging.getLogger("tether.dreams")

KIND = "dream"
ID_PREFIX = "drm"
RUNNER_ATTRIBUTE = "dream_runner"
"""Where the API looks for the ``DreamRunner`` on the gateway's state; without one, dreams are
stored and stay ``pending`` until canceled."""
_ORDER = {status: position for position, status in enumerate(STATUSES)}
_UNSTOPPED = ["pending", "running"]


class DreamRunner(Protocol):
    """Runs dreams. ``start`` is told of each created dream, ``cancel`` of each canceled one
    (also of one canceled before, so it must be idempotent); both should return promptly."""

    async def start(self, dream: Body) -> None: ...

    async def cancel(self, dream: Body) -> None: ...

    async def refresh(self, dream: Body) -> Body:
        """The dream with its progress so far recorded (asked when it is retrieved)."""
        ...


class InvalidTransition(ValueError):
    """A runner asked to move a dream backwards (``running`` to ``pending``): a bug in it."""

    def __init__(self, dream_id: str, before: str, after: str) -> None:
        super().__init__(f"dream {dream_id} cannot go from {before} back to {after}")


async def create(store: Store, request: DreamCreate) -> Body:
    """A ``pending`` dream, once its inputs are found: an unknown memory store is a 404 like any
    missing resource, an archived one a 400; unknown sessions are a 400 naming every one."""
    store_id = request.memory_store_id
    memory_store = await memory_stores.get(store, store_id)
    if memory_store.get("archived_at"):
        raise InvalidRequest(f"inputs: memory store {store_id} is archived; a dream cannot read it")
    missing = [
        session_id for session_id in request.session_ids if await store.get(sessions.KIND, session_id) is None
    ]
    if missing:
        raise InvalidRequest(f"inputs: session_ids: not found: {', '.join(missing)}")
    if request.output_behavior.type == "update_existing":
        await _require_no_writer(store, store_id)
    body = dream_body(ids.new_id(ID_PREFIX), request, ids.timestamp())
    await store.insert(KIND, body)
    log.info("dream %s created on memory store %s", body["id"], store_id)
    return body


async def _require_no_writer(store: Store, store_id: str) -> None:
    """One ``update_existing`` dream at a time per memory store (the SDK's 409). A check, not a
    lock: two creates racing on different gateway processes may both pass it."""
    writers = await store.list_resources(
        KIND,
        cursor=None,
        limit=1,
        include_archived=True,
        equals={"output_behavior.type": "update_existing", "output_behavior.memory_store_id": store_id},
        one_of={"status": _UNSTOPPED},
    )
    if writers.items:
        raise Conflict(
            f"output_behavior: dream {writers.items[0]['id']} is still writing to memory store "
            f"{store_id}; cancel it or wait for it to stop"
        )


async def get(store: Store, dream_id: str) -> Body:
    """Archived dreams too."""
    return await common.fetch(store, KIND, dream_id)


async def list_dreams(
    store: Store,
    *,
    cursor: int | None,
    limit: int,
    include_archived: bool,
    created: tuple[str | None, str | None],
    statuses: list[str],
) -> Page:
    """Newest first; ``created`` bounds are inclusive; no ``statuses`` means every status."""
    return await store.list_resources(
        KIND,
        cursor=cursor,
        limit=limit,
        include_archived=include_archived,
        created_gte=created[0],
        created_lte=created[1],
        one_of={"status": sorted(set(statuses))} if statuses else None,
    )


async def archive(store: Store, dream_id: str) -> Body:
    """Hide a final dream from default lists, for good. Idempotent, as the SDK says ("Archiving
    an archived dream returns it unchanged"): the first ``archived_at`` stays. A ``pending`` or
    ``running`` dream is a 400 (cancel it first)."""

    def mark(current: Body) -> Body:
        if current.get("archived_at"):
            return current
        if current["status"] not in FINAL_STATUSES:
            raise InvalidRequest(f"dream {dream_id} is {current['status']}: cancel it before archiving it")
        return {**current, "archived_at": ids.timestamp()}

    body = await store.update(KIND, dream_id, mark)
    if body is None:
        raise NotFound(KIND, dream_id)
    log.info("dream %s archived", dream_id)
    return body


async def cancel(store: Store, dream_id: str) -> Body:
    """``pending`` or ``running`` becomes ``canceled`` with an ``ended_at``; a canceled dream is
    answered unchanged; a ``completed`` or ``failed`` one is a 400 (the SDK's rule)."""

    def stop(current: Body) -> Body:
        status = current["status"]
        if status == "canceled":
            return current
        if status in FINAL_STATUSES:
            raise InvalidRequest(
                f"dream {dream_id} is already {status}; only a pending or running dream can be canceled"
            )
        return {**current, "status": "canceled", "ended_at": ids.timestamp()}

    body = await store.update(KIND, dream_id, stop)
    if body is None:
        raise NotFound(KIND, dream_id)
    log.info("dream %s canceled", dream_id)
    return body


async def advance(store: Store, dream_id: str, **changes: Any) -> Body:
    """The runner's one way to record progress: ``status``, ``session_id``, ``outputs``,
    ``usage``, ``error``, ``ended_at`` (a None ``status`` leaves it), applied in one atomic
    update. Moving to a final status sets ``ended_at`` unless given. A final dream is returned
    as it is, except that a canceled one still takes ``usage``. Malformed changes raise
    pydantic's ``ValidationError``, a move backwards ``InvalidTransition``."""
    given = DreamChanges.model_validate(changes)
    fields = given.model_dump(include=given.model_fields_set)
    if fields.get("status", "") is None:
        del fields["status"]

    def apply(current: Body) -> Body:
        before = current["status"]
        if before in FINAL_STATUSES:
            if before == "canceled" and "usage" in fields:
                return {**current, "usage": fields["usage"]}
            return current
        after = str(fields.get("status", before))
        if _ORDER[after] < _ORDER[before]:
            raise InvalidTransition(dream_id, before, after)
        updated = {**current, **fields}
        if after in FINAL_STATUSES and "ended_at" not in fields:
            updated["ended_at"] = ids.timestamp()
        return updated

    body = await store.update(KIND, dream_id, apply)
    if body is None:
        raise NotFound(KIND, dream_id)
    return body
