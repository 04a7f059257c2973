"""The deployment scheduler against real stores (SQLite and PostgreSQL), its clock given.

Each tick is called with the time it should believe, so the tests walk a one-minute cron
through several minutes without waiting for them: it fires once per cron time, not while
paused, not for times missed while paused, exactly once when two replicas tick together, and
a fire claimed by a replica that died before recording it is completed by another, with the
same session, after the takeover delay (not before).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from anthropic.types.beta.beta_managed_agents_deployment_run import BetaManagedAgentsDeploymentRun

from gateway import ids
from gateway.resources import agents, deployment_runs, deployments, environments, work
from gateway.scheduling.cron import Cron, InvalidSchedule
from gateway.scheduling.scheduler import TAKEOVER_SECONDS, Scheduler
from gateway.schemas.agents import AgentCreate
from gateway.schemas.deployments import DeploymentCreate, DeploymentUpdate
from gateway.schemas.environments import EnvironmentCreate
from gateway.store.base import Body, Store
from tests.support.postgres import empty_store

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 7, 9, 0, 30, tzinfo=UTC)
"""A moment half a minute past a cron time; the tests' clock starts here."""


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with empty_store(request.param, tmp_path) as opened:
        yield opened


async def _deployment(store: Store, expression: str = "* * * * *", created: datetime = T0) -> Body:
    agent = await agents.create(store, AgentCreate(name="cron", model="claude-sonnet-4-6"))
    environment = await environments.create(store, EnvironmentCreate(name="cron"))
    request = DeploymentCreate.model_validate(
        {
            "agent": agent["id"],
            "environment_id": environment["id"],
            "name": "nightly",
            "initial_events": [{"type": "user.message", "content": [{"type": "text", "text": "go"}]}],
            "schedule": {"type": "cron", "expression": expression, "timezone": "Europe/Berlin"},
        }
    )
    body = await deployments.create(store, request)
    # The schedule counts from creation: pretend it was created at ``created``.
    return await store.update(deployments.KIND, body["id"], lambda b: {**b, "_cursor": _ts(created)}) or body


def _ts(moment: datetime) -> str:
    return ids.timestamp(moment)


def _minute(n: int) -> datetime:
    """``n`` minutes after the cron time before T0, plus a few seconds (a tick's lateness)."""
    return T0.replace(second=0) + timedelta(minutes=n, seconds=3)


async def _runs(store: Store, deployment_id: str) -> list[Body]:
    page = await store.list_resources(
        deployment_runs.KIND,
        cursor=None,
        limit=100,
        include_archived=True,
        equals={"deployment_id": deployment_id},
    )
    return page.items


class Woken(list[str]):
    def __call__(self, session_id: str) -> None:
        self.append(session_id)


async def test_a_minute_cron_fires_once_per_minute_and_never_while_paused(store: Store) -> None:
    deployment = await _deployment(store)
    woken = Woken()
    scheduler = Scheduler(store, woken)

    assert await scheduler.tick(T0) == []  # the cron time before creation does not fire
    first = await scheduler.tick(_minute(1))
    assert [r["trigger_context"] for r in first] == [
        {"type": "schedule", "scheduled_at": _ts(_minute(1).replace(second=0))}
    ]
    assert await scheduler.tick(_minute(1) + timedelta(seconds=20)) == []  # same minute: nothing more
    second = await scheduler.tick(_minute(2))
    assert len(second) == 1

    await deployments.pause(store, deployment["id"])
    assert await scheduler.tick(_minute(3)) == []
    assert await scheduler.tick(_minute(4)) == []
    await deployments.unpause(store, deployment["id"], now=_minute(4))
    assert await scheduler.tick(_minute(4) + timedelta(seconds=30)) == []
    third = await scheduler.tick(_minute(5))
    assert len(third) == 1

    runs = await _runs(store, deployment["id"])
    assert len(runs) == 3 and all(r["error"] is None for r in runs)
    for run in runs:
        BetaManagedAgentsDeploymentRun.model_validate(run, strict=False)
        session = await store.get("session", run["session_id"])
        assert session is not None and session["agent"]["version"] == deployment["agent"]["version"]
        assert await store.last_seq(run["session_id"]) == 1  # the initial user.message, once
    assert sorted(woken) == sorted(r["session_id"] for r in runs)
    after = await deployments.get(store, deployment["id"])
    assert after["_pending"] is None
    assert after["schedule"]["last_run_at"] == max(r["created_at"] for r in runs)


async def test_replicas_ticking_together_fire_each_time_exactly_once(store: Store) -> None:
    deployment = await _deployment(store)
    replicas = [Scheduler(store, Woken()) for _ in range(4)]
    for minute in (1, 2, 3):
        fired: list[Body] = []

        async def tick(scheduler: Scheduler, moment: datetime, into: list[Body]) -> None:
            into.extend(await scheduler.tick(moment))

        async with anyio.create_task_group() as group:
            for scheduler in replicas:
                group.start_soon(tick, scheduler, _minute(minute), fired)
        assert len(fired) == 1, f"minute {minute}: {len(fired)} fires"
    runs = await _runs(store, deployment["id"])
    assert len(runs) == 3 and len({r["session_id"] for r in runs}) == 3


async def test_only_the_latest_missed_time_fires_after_downtime(store: Store) -> None:
    deployment = await _deployment(store)
    manual_only = await store.update(
        deployments.KIND, (await _deployment(store))["id"], lambda b: {**b, "schedule": None}
    )
    fired = await Scheduler(store, Woken()).tick(_minute(90))  # no gateway for 90 minutes
    assert manual_only is not None and await _runs(store, manual_only["id"]) == []
    assert [r["trigger_context"]["scheduled_at"] for r in fired] == [_ts(_minute(90).replace(second=0))]
    assert len(await _runs(store, deployment["id"])) == 1


async def _claimed_by_a_dying_replica(
    store: Store, deployment: Body, monkeypatch: pytest.MonkeyPatch
) -> Body:
    """A replica claims the fire at minute 1 and dies before creating anything; its claim."""

    async def die(*_: Any, **__: Any) -> Body:
        raise RuntimeError("kill -9 between the claim and the run")

    dead = Scheduler(store, Woken())
    with monkeypatch.context() as patched:
        patched.setattr(deployment_runs, "fire", die)
        assert await dead.tick(_minute(1)) == []
    pending = (await deployments.get(store, deployment["id"]))["_pending"]
    assert pending is not None and pending["owner"] == dead.owner
    return pending


LATE = timedelta(seconds=TAKEOVER_SECONDS + 5)
"""After the takeover delay."""


async def test_a_fire_whose_replica_died_is_completed_once_by_another(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = await _deployment(store)
    pending = await _claimed_by_a_dying_replica(store, deployment, monkeypatch)

    survivor = Scheduler(store, Woken())
    assert await survivor.tick(_minute(1) + timedelta(seconds=TAKEOVER_SECONDS - 5)) == []  # too early
    [run] = await survivor.tick(_minute(1) + LATE)
    assert run["id"] == pending["run_id"] and run["session_id"] == pending["session_id"]
    assert await survivor.tick(_minute(1) + LATE + timedelta(seconds=5)) == []
    assert [r["id"] for r in await _runs(store, deployment["id"])] == [pending["run_id"]]
    assert (await deployments.get(store, deployment["id"]))["_pending"] is None


@pytest.mark.parametrize("change", ["pause", "archive", "unschedule", "reschedule"])
async def test_a_dead_replicas_claim_is_dropped_when_the_deployment_no_longer_wants_it(
    store: Store, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    deployment = await _deployment(store)
    pending = await _claimed_by_a_dying_replica(store, deployment, monkeypatch)
    if change == "pause":
        await deployments.pause(store, deployment["id"])
    elif change == "archive":
        await deployments.archive(store, deployment["id"])
    else:
        schedule = (
            None
            if change == "unschedule"
            else {"type": "cron", "expression": "0 12 * * *", "timezone": "UTC"}
        )
        await deployments.update(
            store, deployment["id"], DeploymentUpdate.model_validate({"schedule": schedule})
        )

    assert await Scheduler(store, Woken()).tick(_minute(1) + LATE) == []
    assert await _runs(store, deployment["id"]) == []
    assert await store.get("session", pending["session_id"]) is None
    assert (await deployments.get(store, deployment["id"]))["_pending"] is None


async def test_a_stalled_owner_cannot_log_the_initial_events_twice(store: Store) -> None:
    """Owner A created the session and stalled before appending; B took over and completed the
    fire; A's append, built from what it saw before, must fail rather than double the prompt."""
    deployment = await _deployment(store)
    run_id, session_id, event_ids = "drun_" + "b" * 24, "sesn_" + "b" * 24, ["sevt_" + "b" * 24]

    async def complete(view: Any) -> Body:
        return await deployment_runs.fire(view, deployment, {"type": "manual"}, run_id, session_id, event_ids)

    await complete(store)  # B

    class StaleView:
        """A's view: the log still looked empty when it checked."""

        def __getattr__(self, name: str) -> Any:
            return getattr(store, name)

        async def last_seq(self, session_id: str) -> int:
            return 0

        async def get(self, kind: str, resource_id: str) -> Body | None:
            return None if kind == deployment_runs.KIND else await store.get(kind, resource_id)

    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await complete(StaleView())  # A, late
    assert await store.last_seq(session_id) == 1


async def test_a_self_hosted_sessions_work_item_lost_to_a_crash_is_queued_again(store: Store) -> None:
    deployment = await _deployment(store)
    hosted = await environments.create(
        store, EnvironmentCreate.model_validate({"name": "on-prem", "config": {"type": "self_hosted"}})
    )
    deployment = (
        await store.update(
            deployments.KIND, deployment["id"], lambda b: {**b, "environment_id": hosted["id"]}
        )
        or deployment
    )
    session_id = "sesn_" + "c" * 24
    await deployment_runs.fire(store, deployment, {"type": "manual"}, session_id=session_id)
    [item] = (
        await store.list_resources(
            work.KIND, cursor=None, limit=5, include_archived=True, equals={"data.id": session_id}
        )
    ).items
    await store.delete(work.KIND, item["id"])  # the crash came between the session and its work item
    await store.delete(deployment_runs.KIND, (await _runs(store, deployment["id"]))[0]["id"])

    await deployment_runs.fire(store, deployment, {"type": "manual"}, session_id=session_id)
    queued = await store.list_resources(
        work.KIND, cursor=None, limit=5, include_archived=True, equals={"data.id": session_id}
    )
    assert len(queued.items) == 1


async def test_a_deleted_file_makes_the_run_a_file_not_found_error(store: Store) -> None:
    deployment = await _deployment(store)
    image = {"type": "image", "source": {"type": "file", "file_id": "file_" + "d" * 24}}
    with_file = await store.update(
        deployments.KIND,
        deployment["id"],
        lambda b: {**b, "initial_events": [{"type": "user.message", "content": [image]}]},
    )
    assert with_file is not None
    run = await deployment_runs.fire(store, with_file, {"type": "manual"})
    assert run["session_id"] is None and run["error"]["type"] == "file_not_found_error"


async def test_resending_the_same_schedule_keeps_the_cursor(store: Store) -> None:
    deployment = await _deployment(store)
    same = {k: deployment["schedule"][k] for k in ("expression", "timezone")}
    kept = await deployments.update(
        store, deployment["id"], DeploymentUpdate.model_validate({"schedule": {"type": "cron", **same}})
    )
    assert kept["_cursor"] == deployment["_cursor"] and kept["updated_at"] == deployment["updated_at"]


async def test_a_session_created_before_a_crash_is_not_created_again(store: Store) -> None:
    deployment = await _deployment(store)
    session_id = "sesn_" + "x" * 24
    first = await deployment_runs.fire(
        store, deployment, {"type": "manual"}, run_id="drun_" + "a" * 24, session_id=session_id
    )
    # The run record is lost (say); completing the same fire again keeps one session, one message.
    await store.delete(deployment_runs.KIND, first["id"])
    again = await deployment_runs.fire(
        store, deployment, {"type": "manual"}, run_id=first["id"], session_id=session_id
    )
    assert again["session_id"] == session_id and await store.last_seq(session_id) == 1


async def test_a_scheduled_fire_that_fails_pauses_the_deployment_with_its_error(store: Store) -> None:
    deployment = await _deployment(store)
    await agents.archive(store, deployment["agent"]["id"])
    [run] = await Scheduler(store, Woken()).tick(_minute(1))
    assert run["session_id"] is None and run["error"]["type"] == "agent_archived_error"
    after = await deployments.get(store, deployment["id"])
    assert after["status"] == "paused"
    assert after["paused_reason"] == {"type": "error", "error": run["error"]}
    assert await Scheduler(store, Woken()).tick(_minute(2)) == []  # paused: no more fires


def test_cron_times_follow_the_time_zone_and_daylight_saving() -> None:
    cron = Cron.parse("30 2 * * *", "Europe/Berlin")
    # 2030-03-31 has no 02:30 in Berlin (clocks jump from 02:00 to 03:00).
    times = cron.upcoming(datetime(2030, 3, 29, 12, tzinfo=UTC), 3)
    assert times[0] == datetime(2030, 3, 30, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert times[2] == datetime(2030, 4, 1, 0, 30, tzinfo=UTC)  # 02:30 CEST
    since = datetime(2030, 3, 29, 12, tzinfo=UTC)
    assert cron.due(since, times[0]) == times[0]
    assert cron.due(since, times[0] - timedelta(seconds=1)) is None


def test_at_the_fall_back_hour_a_fire_is_due_at_its_listed_time_never_before() -> None:
    """New York, 2026-11-01: 01:00 happens twice (05:00Z EDT, 06:00Z EST)."""
    cron = Cron.parse("0 * * * *", "America/New_York")
    since = datetime(2026, 11, 1, 5, 0, 30, tzinfo=UTC)
    listed = cron.upcoming(since, 2)
    assert listed == [datetime(2026, 11, 1, 6, tzinfo=UTC), datetime(2026, 11, 1, 7, tzinfo=UTC)]
    assert cron.due(since, listed[0] - timedelta(seconds=1)) is None
    for late in (0, 1, 1.1, 3599.5):  # whatever the tick's lateness, the same time is due
        assert cron.due(since, listed[0] + timedelta(seconds=late)) == listed[0]
    assert cron.due(listed[0], listed[1]) == listed[1]


@pytest.mark.parametrize("zone", ["America", "Etc", "localtime", "posix/UTC", "../etc/passwd", ""])
def test_only_iana_zone_names_are_accepted(zone: str) -> None:
    with pytest.raises(InvalidSchedule, match="timezone"):
        Cron.parse("* * * * *", zone)
