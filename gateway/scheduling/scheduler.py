"""Fires scheduled deployments: exactly once per cron time across gateway replicas, and never
lost to a crash.

Each tick looks at every active deployment with a schedule. A fire is claimed by one atomic
update of the deployment (compare-and-set on ``_cursor``, the time through which its schedule
has been considered) that also records the fire as ``_pending``, with the run and session ids
chosen ahead. Only the replica whose update moved the cursor fires; a replica that crashes
before recording the run leaves ``_pending`` behind, and after ``TAKEOVER_SECONDS`` another
replica (or the same one restarted) takes it over by a second compare-and-set and completes it
with the same ids, so the session is created once and the run recorded once.

Missed fires: when no gateway ran through several cron times, only the most recent of them
fires, once, when one comes back (if it is at most a day old); the earlier ones are skipped
(no run is recorded for them). A paused deployment fires nothing, and on unpause its schedule
starts from that moment. A claim left behind by a dead replica is dropped instead of completed
when the deployment was paused, archived or rescheduled since, unless its session exists.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import anyio

from gateway import ids
from gateway.pricing import DEFAULT_TABLE, PriceTable
from gateway.resources import deployment_runs, deployments
from gateway.scheduling.cron import Cron, InvalidSchedule
from gateway.store.base import Body, Store

log = logging.getLogger("tether.scheduler")

TICK_SECONDS = 1.0
TAKEOVER_SECONDS = 30.0
"""A claimed fire still unrecorded this long after its claim is completed by another replica."""
PAGE = 100
PAUSED_REASON_ERRORS = frozenset(
    {
        "agent_archived_error",
        "environment_archived_error",
        "environment_not_found_error",
        "vault_archived_error",
        "vault_not_found_error",
        "unknown_error",
    }
)
"""Run errors that the SDK's ``paused_reason`` can carry as they are; others become unknown."""


def _withdrawn(deployment: Body, pending: Body) -> bool:
    """Whether the deployment no longer wants the fire claimed: paused, archived, or its
    schedule cleared or changed since."""
    schedule = deployment.get("schedule")
    return (
        bool(deployment.get("archived_at"))
        or deployment["status"] != "active"
        or schedule is None
        or {"expression": schedule["expression"], "timezone": schedule["timezone"]} != pending["schedule"]
    )


class Scheduler:
    def __init__(
        self,
        store: Store,
        wake: Callable[[str], None],
        prices: PriceTable = DEFAULT_TABLE,
        owner: str | None = None,
    ) -> None:
        self._store = store
        self._wake = wake
        self._prices = prices
        self.owner = owner or ids.new_id("sched")

    async def run_forever(self) -> None:
        while True:
            await self.tick(ids.now())
            await anyio.sleep(TICK_SECONDS)

    async def tick(self, now: datetime) -> list[Body]:
        """Fire what is due at ``now``; return the runs recorded."""
        runs = []
        for deployment in await self._scheduled():
            pending = deployment.get("_pending")
            if pending is None:
                claimed = await self._claim(deployment, now)
            elif not self._stale(pending, now):
                continue  # its replica is still at it
            elif _withdrawn(deployment, pending) and not await self._session_exists(pending):
                await self._drop(deployment, pending)  # paused, archived or rescheduled meanwhile
                continue
            else:
                claimed = await self._take_over(deployment, now)
            if claimed is None:
                continue
            try:
                runs.append(await self._complete(claimed))
            except Exception:
                # One deployment's failure must not hold back the others; its claim stays
                # pending, so the next tick (or another replica, later) completes it.
                log.exception(
                    "deployment %s: the scheduled fire failed; it will be retried", deployment["id"]
                )
        return runs

    async def _scheduled(self) -> list[Body]:
        """Deployments with a schedule, and any (even archived or unscheduled by now) with a
        claimed fire still to finish or drop."""
        found: dict[str, Body] = {}
        for archived, field in ((False, "schedule"), (True, "_pending")):
            cursor = None
            while True:
                page = await self._store.list_resources(
                    deployments.KIND, cursor=cursor, limit=PAGE, include_archived=archived, not_null=[field]
                )
                found.update((body["id"], body) for body in page.items)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        return list(found.values())

    async def _session_exists(self, pending: Body) -> bool:
        return await self._store.get("session", pending["session_id"]) is not None

    async def _drop(self, deployment: Body, pending: Body) -> None:
        """Withdraw a claimed fire that created nothing yet (compare-and-set, like the claim)."""

        def drop(current: Body) -> Body:
            return {**current, "_pending": None} if current.get("_pending") == pending else current

        await self._store.update(deployments.KIND, deployment["id"], drop)
        log.info("deployment %s: dropped the fire claimed for %s", deployment["id"], pending["scheduled_at"])

    def _stale(self, pending: Body, now: datetime) -> bool:
        claimed_at = datetime.fromisoformat(pending["claimed_at"])
        return pending["owner"] == self.owner or now - claimed_at > timedelta(seconds=TAKEOVER_SECONDS)

    async def _claim(self, deployment: Body, now: datetime) -> Body | None:
        if deployment["status"] != "active":
            return None
        schedule = deployment["schedule"]
        cursor = datetime.fromisoformat(deployment["_cursor"])
        try:
            due = Cron.parse(schedule["expression"], schedule["timezone"]).due(cursor, now)
        except InvalidSchedule as exc:  # e.g. a time zone this host's database lacks
            log.warning("deployment %s: schedule cannot be evaluated: %s", deployment["id"], exc)
            return None
        if due is None:
            return None
        pending = {
            "run_id": ids.new_id(deployment_runs.PREFIX),
            "session_id": ids.new_id(ids.SESSION),
            # Fixed ahead, so a replica completing this fire again cannot log the events twice.
            "event_ids": [ids.new_id(ids.EVENT) for _ in deployment["initial_events"]],
            "scheduled_at": ids.timestamp(due),
            "schedule": {"expression": schedule["expression"], "timezone": schedule["timezone"]},
            "owner": self.owner,
            "claimed_at": ids.timestamp(now),
        }

        def claim(current: Body) -> Body:
            if (
                current.get("archived_at")
                or current["status"] != "active"
                or current.get("_pending") is not None
                or current.get("schedule") is None
                or datetime.fromisoformat(current["_cursor"]) >= due
            ):
                return current  # another replica fired it, or the deployment changed
            return {**current, "_cursor": ids.timestamp(due), "_pending": pending}

        return await self._won(deployment["id"], claim, pending)

    async def _take_over(self, deployment: Body, now: datetime) -> Body | None:
        stale = deployment["_pending"]
        pending = {**stale, "owner": self.owner, "claimed_at": ids.timestamp(now)}

        def take(current: Body) -> Body:
            return {**current, "_pending": pending} if current.get("_pending") == stale else current

        return await self._won(deployment["id"], take, pending)

    async def _won(self, deployment_id: str, mutate: Callable[[Body], Body], pending: Body) -> Body | None:
        updated = await self._store.update(deployments.KIND, deployment_id, mutate)
        return updated if updated is not None and updated.get("_pending") == pending else None

    async def _complete(self, deployment: Body) -> Body:
        pending = deployment["_pending"]
        trigger = {"type": "schedule", "scheduled_at": pending["scheduled_at"]}
        run = await deployment_runs.fire(
            self._store,
            deployment,
            trigger,
            run_id=pending["run_id"],
            session_id=pending["session_id"],
            event_ids=pending["event_ids"],
            prices=self._prices,
        )

        def settle(current: Body) -> Body:
            if (current.get("_pending") or {}).get("run_id") != pending["run_id"]:
                return current
            updated = {**current, "_pending": None}
            if run["session_id"] is not None and current.get("schedule") is not None:
                updated["schedule"] = {**current["schedule"], "last_run_at": run["created_at"]}
            if run["error"] is not None and current["status"] == "active" and not current.get("archived_at"):
                error = run["error"]
                if error["type"] not in PAUSED_REASON_ERRORS:
                    error = {"type": "unknown_error", "message": error["message"]}
                updated["status"] = "paused"
                updated["paused_reason"] = {"type": "error", "error": error}
                updated["updated_at"] = ids.timestamp()
            return updated

        await self._store.update(deployments.KIND, deployment["id"], settle)
        if run["session_id"] is not None:
            self._wake(run["session_id"])
        log.info("deployment %s fired for %s: run %s", deployment["id"], pending["scheduled_at"], run["id"])
        return run
