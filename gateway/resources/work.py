"""The self-hosted work queue: sessions in ``self_hosted`` environments wait here for a worker.

States follow the SDK: ``queued`` (visible to pollers) → ``starting`` (acknowledged) →
``active`` (heartbeating) → ``stopping`` → ``stopped``. A polled item stays invisible to
other pollers for ``reclaim_older_than_ms`` unless acknowledged; a lease whose heartbeats
lapse returns its item to ``queued`` for another worker. Heartbeats are conditional on the
previous value (``expected_last_heartbeat``), so two workers can never both hold a lease.
A reclaimed item starts over at ``NO_HEARTBEAT``: its next worker claims it like a new one.

Stopping a session's item is how the gateway tells its worker the session is gone
(``stopping``; the worker confirms with a forced stop). An item nobody holds any more (queued,
or its lease lapsed) goes straight to ``stopped``: no worker is left to confirm it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio

from gateway import ids
from gateway.errors import InvalidRequest, NotFound, TetherError
from gateway.resources import common
from gateway.schemas.common import apply_metadata_patch
from gateway.store.base import Body, Store
from gateway.store.notifier import Notifier

KIND = "work"
PREFIX = "work"
NO_HEARTBEAT = "NO_HEARTBEAT"
DEFAULT_RECLAIM_MS = 5000
DEFAULT_TTL = 30
MAX_TTL = 3600
WORKER_WINDOW = 30.0

_arrivals = Notifier()
_changes = Notifier()
"""Keyed by session id: wakes a gateway waiting for the session's sandbox (``watch``)."""
_pollers: dict[str, dict[str, float]] = {}


class HeartbeatPreconditionFailed(TetherError):
    status_code = 412
    error_type = "invalid_request_error"

    def __init__(self, lease: Body) -> None:
        super().__init__(
            "expected_last_heartbeat does not match the stored heartbeat; another worker may hold the lease"
        )
        self.lease = lease

    def extra(self) -> dict[str, object]:
        return {"error_code": "heartbeat_precondition_failed", "details": {"current_state": self.lease}}


def _now() -> float:
    return time.time()


def _stamp(moment: float) -> str:
    return ids.timestamp(datetime.fromtimestamp(moment, UTC))


async def enqueue(store: Store, environment_id: str, session_id: str) -> Body:
    body: Body = {
        "type": "work",
        "id": ids.new_id(PREFIX),
        "environment_id": environment_id,
        "data": {"type": "session", "id": session_id},
        "state": "queued",
        "metadata": {},
        "created_at": ids.timestamp(),
        "acknowledged_at": None,
        "started_at": None,
        "latest_heartbeat_at": None,
        "stop_requested_at": None,
        "stopped_at": None,
        "_polled_at": 0.0,
        "_lease_expires": 0.0,
        "_ttl": DEFAULT_TTL,
    }
    await store.insert(KIND, body)
    _arrivals.notify(environment_id)
    return body


async def get(store: Store, environment_id: str, work_id: str) -> Body:
    body = await common.fetch(store, KIND, work_id)
    if body["environment_id"] != environment_id:
        raise NotFound(KIND, work_id)
    return body


async def _all(store: Store, environment_id: str) -> list[Body]:
    page = await store.list_resources(
        KIND,
        cursor=None,
        limit=10_000,
        include_archived=True,
        equals={"environment_id": environment_id},
        order="asc",
    )
    return page.items


def _lapsed(item: Body, now: float) -> bool:
    return bool(
        item["state"] in ("starting", "active") and item["_lease_expires"] and item["_lease_expires"] < now
    )


def held(item: Body, now: float | None = None) -> bool:
    """A worker holds the item now: acknowledged or active, with a lease that has not lapsed."""
    return item["state"] in ("starting", "active") and not _lapsed(item, _now() if now is None else now)


def _claimable(item: Body, now: float, reclaim_ms: int) -> bool:
    if item["state"] == "queued":
        return item["_polled_at"] <= now - reclaim_ms / 1000
    return _lapsed(item, now)


async def poll(
    store: Store, environment_id: str, block_ms: int | None, reclaim_ms: int | None, worker_id: str | None
) -> Body | None:
    reclaim = DEFAULT_RECLAIM_MS if reclaim_ms is None else reclaim_ms
    _pollers.setdefault(environment_id, {})[worker_id or "anonymous"] = _now()
    deadline = anyio.current_time() + (block_ms or 0) / 1000
    while True:
        with _arrivals.watch(environment_id) as arrived:
            claimed = await _claim(store, environment_id, reclaim)
            remaining = deadline - anyio.current_time()
            if claimed is not None or remaining <= 0:
                return claimed
            with anyio.move_on_after(remaining):
                await arrived.wait()


async def _claim(store: Store, environment_id: str, reclaim_ms: int) -> Body | None:
    for candidate in await _all(store, environment_id):
        now = _now()
        if not _claimable(candidate, now, reclaim_ms):
            continue

        def mark(current: Body, now: float = now) -> Body:
            if not _claimable(current, now, reclaim_ms):
                raise _Taken
            # A lapsed lease's last heartbeat belonged to the old worker: the next one starts
            # over at NO_HEARTBEAT, and the old worker's heartbeats now fail with 412.
            return {
                **current,
                "state": "queued",
                "latest_heartbeat_at": None,
                "_polled_at": now,
                "_lease_expires": 0.0,
            }

        try:
            return await store.update(KIND, candidate["id"], mark)
        except _Taken:
            continue
    return None


class _Taken(Exception):
    """Another poller claimed the item between the scan and the update."""


async def ack(store: Store, environment_id: str, work_id: str) -> Body:
    await get(store, environment_id, work_id)

    def apply(current: Body) -> Body:
        if current["state"] != "queued":
            raise InvalidRequest(f"work {work_id} is {current['state']}, not queued")
        moment = _now()
        return {
            **current,
            "state": "starting",
            "acknowledged_at": _stamp(moment),
            "_lease_expires": moment + current["_ttl"],
        }

    return await _update(store, work_id, apply)


async def heartbeat(
    store: Store, environment_id: str, work_id: str, expected: str, desired_ttl: int | None
) -> Body:
    await get(store, environment_id, work_id)
    ttl = min(max(desired_ttl or DEFAULT_TTL, 1), MAX_TTL)
    outcome: dict[str, Any] = {}

    def apply(current: Body) -> Body:
        if current["state"] in ("stopping", "stopped"):
            outcome["extended"] = False
            return current
        stored = current["latest_heartbeat_at"] or NO_HEARTBEAT
        if current["state"] == "queued" or stored != expected:
            raise HeartbeatPreconditionFailed(_lease(current, extended=False))
        moment = _now()
        outcome["extended"] = True
        return {
            **current,
            "state": "active",
            "started_at": current["started_at"] or _stamp(moment),
            "latest_heartbeat_at": _stamp(moment),
            "_ttl": ttl,
            "_lease_expires": moment + ttl,
        }

    body = await _update(store, work_id, apply)
    return {"type": "work_heartbeat", **_lease(body, extended=outcome["extended"])}


def _lease(body: Body, extended: bool) -> Body:
    return {
        "last_heartbeat": body["latest_heartbeat_at"],
        "lease_extended": extended,
        "state": body["state"],
        "ttl_seconds": int(body["_ttl"]),
    }


async def stop(store: Store, environment_id: str, work_id: str, force: bool) -> Body:
    await get(store, environment_id, work_id)

    def apply(current: Body) -> Body:
        if current["state"] == "stopped":
            return current
        now = _now()
        moment = _stamp(now)
        final = force or current["state"] == "queued" or _lapsed(current, now)
        return {
            **current,
            "state": "stopped" if final else "stopping",
            "stop_requested_at": current["stop_requested_at"] or moment,
            "stopped_at": moment if final else None,
        }

    return await _update(store, work_id, apply)


async def update_metadata(
    store: Store, environment_id: str, work_id: str, patch: dict[str, str | None]
) -> Body:
    await get(store, environment_id, work_id)
    return await _update(
        store,
        work_id,
        lambda current: {**current, "metadata": apply_metadata_patch(current["metadata"], patch)},
    )


async def stats(store: Store, environment_id: str) -> Body:
    items = await _all(store, environment_id)
    queued = [i for i in items if i["state"] == "queued"]
    recent = [w for w, seen in _pollers.get(environment_id, {}).items() if seen > _now() - WORKER_WINDOW]
    return {
        "type": "work_queue_stats",
        "depth": len(queued),
        "pending": len([i for i in items if i["state"] in ("starting", "active")]),
        "oldest_queued_at": min((i["created_at"] for i in queued), default=None),
        "workers_polling": len(recent),
    }


async def for_session(store: Store, session_id: str) -> Body | None:
    """The session's newest work item (one is queued per self-hosted session)."""
    page = await store.list_resources(
        KIND, cursor=None, limit=1, include_archived=True, equals={"data.id": session_id}
    )
    return page.items[0] if page.items else None


async def stop_for_session(store: Store, session_id: str) -> None:
    """The session was archived or deleted: ask whoever runs its sandbox to stop."""
    page = await store.list_resources(
        KIND, cursor=None, limit=100, include_archived=True, equals={"data.id": session_id}
    )
    for item in page.items:
        if item["state"] != "stopped":
            await stop(store, item["environment_id"], item["id"], force=False)


@contextmanager
def watch(session_id: str) -> Iterator[asyncio.Event]:
    """An event set by the next change to the session's work item in this process. Take it
    *before* reading the item, so a change in between still wakes the waiter; changes made
    through another replica are only seen by re-reading."""
    with _changes.watch(session_id) as changed:
        yield changed


async def _update(store: Store, work_id: str, mutate: Any) -> Body:
    body = await store.update(KIND, work_id, mutate)
    if body is None:
        raise NotFound(KIND, work_id)
    _changes.notify(body["data"]["id"])
    return body
