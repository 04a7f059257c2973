"""The deployment scheduler against real stores (SQLite and PostgreSQL), its clock given.

Each tick is called with the time it should believe, so the tests walk a one-minute cron
through several minutes without waiting for them: it fires once per cron time, not while
paused, not for times missed while paused, exactly once when two replicas tick together, and
a fire claimed by a replica that died before recording it is completed by another, with the
same session, after the takeover delay (not before).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from anthropic.types.beta.beta_managed_agents_deployment_run import BetaManagedAgentsDeploymentRun

from gateway import ids
from gateway.resources import agents, deployment_runs, deployments, environments
from gateway.scheduling.cron import Cron
from gateway.scheduling.scheduler import TAKEOVER_SECONDS, Scheduler
from gateway.schemas.agents import AgentCreate
from gateway.schemas.deployments import DeploymentCreate
from gateway.schemas.environments import EnvironmentCreate
from gateway.store import open_store
from gateway.store.base import Body, Store
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.anyio

T0 = datetime(2030, 1, 7, 9, 0, 30, tzinfo=UTC)
"""A moment half a minute past a cron time; the tests' clock starts here."""


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        opened = await open_store(f"sqlite://{tmp_path}/store.db")
        try:
            yield opened
        finally:
            await opened.close()
        return
    async with fresh_database() as dsn:
        opened = await open_store(dsn)
        try:
            yield opened
        finally:
            await opened.close()


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


async def test_a_fire_whose_replica_died_is_completed_once_by_another(store: Store) -> None:
    deployment = await _deployment(store)
    dead = Scheduler(store, Woken())

    async def die(*_: Any, **__: Any) -> Body:
        raise RuntimeError("kill -9 between the claim and the run")

    real_fire = deployment_runs.fire
    deployment_runs.fire = die  # type: ignore[assignment]
    try:
        assert await dead.tick(_minute(1)) == []
    finally:
        deployment_runs.fire = real_fire  # type: ignore[assignment]
    pending = (await deployments.get(store, deployment["id"]))["_pending"]
    assert pending is not None and pending["owner"] == dead.owner

    survivor = Scheduler(store, Woken())
    assert await survivor.tick(_minute(1) + timedelta(seconds=TAKEOVER_SECONDS - 5)) == []  # too early
    [run] = await survivor.tick(_minute(1) + timedelta(seconds=TAKEOVER_SECONDS + 5))
    assert run["id"] == pending["run_id"] and run["session_id"] == pending["session_id"]
    assert await survivor.tick(_minute(1) + timedelta(seconds=TAKEOVER_SECONDS + 10)) == []
    assert [r["id"] for r in await _runs(store, deployment["id"])] == [pending["run_id"]]
    assert (await deployments.get(store, deployment["id"]))["_pending"] is None


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
    assert cron.latest(datetime(2030, 3, 30, 1, 30, tzinfo=UTC)) == datetime(2030, 3, 30, 1, 30, tzinfo=UTC)
    assert cron.latest(datetime(2030, 3, 30, 1, 29, 59, tzinfo=UTC)) == datetime(
        2030, 3, 29, 1, 30, tzinfo=UTC
    )
