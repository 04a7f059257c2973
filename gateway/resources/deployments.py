"""Deployments: an agent version bound to an environment, vaults and initial events, fired on
demand or by a cron schedule (``gateway.scheduling``) into a new session each time.

A stored deployment carries two internal fields next to its wire shape: ``_cursor``, the time
through which its schedule has been considered (fires are for cron times after it), and
``_pending``, a scheduled fire claimed but not yet recorded as a run (see
``gateway.scheduling.scheduler``). ``render`` drops both and adds the schedule's computed times.
"""

from __future__ import annotations

from datetime import datetime

from gateway import ids
from gateway.errors import InvalidRequest, NotFound
from gateway.pricing import DEFAULT_TABLE, PriceTable
from gateway.resources import agents, budgets, common, environments, vaults
from gateway.scheduling.cron import Cron, InvalidSchedule
from gateway.schemas.common import apply_metadata_patch
from gateway.schemas.deployments import DeploymentCreate, DeploymentUpdate, Schedule, event_bodies
from gateway.schemas.sessions import AgentReference, BudgetLimit
from gateway.store.base import Body, Mutation, Store

KIND = "deployment"
PREFIX = "depl"


async def pinned_agent(store: Store, agent: str | AgentReference) -> Body:
    """The agent reference a deployment stores: an id alone pins the latest version."""
    if isinstance(agent, str):
        body = await agents.get(store, agent)
    else:
        body = await agents.get(store, agent.id, agent.version)
    if body.get("archived_at"):
        raise InvalidRequest(f"agent: {body['id']} is archived")
    return {"type": "agent", "id": body["id"], "version": body["version"]}


async def _usable_environment(store: Store, environment_id: str) -> None:
    environment = await environments.get(store, environment_id)
    if environment.get("archived_at"):
        raise InvalidRequest(f"environment_id: {environment_id} is archived")


def _schedule(schedule: Schedule | None) -> Body | None:
    if schedule is None:
        return None
    return {
        "type": "cron",
        "expression": schedule.expression,
        "timezone": schedule.timezone,
        "last_run_at": None,
    }


async def _budget(store: Store, budget: BudgetLimit | None, agent: Body, prices: PriceTable) -> Body | None:
    """A budget is stamped onto every session fired, so the agent's model must have a price."""
    if budget is None:
        return None
    version = await agents.get(store, agent["id"], agent["version"])
    budgets.require_budgetable(prices, str(version["model"]["id"]))
    return budget.model_dump()


async def create(store: Store, request: DeploymentCreate, prices: PriceTable = DEFAULT_TABLE) -> Body:
    agent = await pinned_agent(store, request.agent)
    budget = await _budget(store, request.budget, agent, prices)
    await _usable_environment(store, request.environment_id)
    await vaults.require_usable(store, request.vault_ids)
    moment = ids.timestamp()
    body: Body = {
        "type": "deployment",
        "id": ids.new_id(PREFIX),
        "name": request.name,
        "description": request.description,
        "agent": agent,
        "environment_id": request.environment_id,
        "initial_events": event_bodies(request.initial_events),
        "metadata": request.metadata,
        "vault_ids": request.vault_ids,
        "resources": [],
        "schedule": _schedule(request.schedule),
        "status": "active",
        "paused_reason": None,
        "budget": budget,
        "created_at": moment,
        "updated_at": moment,
        "archived_at": None,
        "_cursor": moment,
        "_pending": None,
    }
    await store.insert(KIND, body)
    return body


async def get(store: Store, deployment_id: str) -> Body:
    return await common.fetch(store, KIND, deployment_id)


def _not_archived(current: Body) -> None:
    if current.get("archived_at"):
        raise InvalidRequest(f"deployment {current['id']} is archived")


async def update(
    store: Store, deployment_id: str, request: DeploymentUpdate, prices: PriceTable = DEFAULT_TABLE
) -> Body:
    given = request.model_fields_set
    for name in ("agent", "environment_id", "initial_events", "name"):
        if name in given and getattr(request, name) is None:
            raise InvalidRequest(f"{name}: may not be null")
    agent = await pinned_agent(store, request.agent) if request.agent is not None else None
    if agent is not None or request.budget is not None:
        current = await get(store, deployment_id)
        kept = request.budget if "budget" in given else current.get("budget")
        if kept is not None:  # the budget that will be stamped, on the agent that will run
            await _budget(store, BudgetLimit.model_validate(kept), agent or current["agent"], prices)
    if request.environment_id is not None:
        await _usable_environment(store, request.environment_id)
    if request.vault_ids:
        await vaults.require_usable(store, request.vault_ids)

    def apply(current: Body) -> Body:
        _not_archived(current)
        updated = dict(current)
        if agent is not None:
            updated["agent"] = agent
        for name in ("environment_id", "name"):
            if name in given:
                updated[name] = getattr(request, name)
        if "initial_events" in given and request.initial_events is not None:
            updated["initial_events"] = event_bodies(request.initial_events)
        if "description" in given:
            updated["description"] = request.description or None
        if "vault_ids" in given:
            updated["vault_ids"] = request.vault_ids or []
        if "budget" in given:
            updated["budget"] = request.budget.model_dump() if request.budget is not None else None
        if "metadata" in given:
            updated["metadata"] = apply_metadata_patch(current["metadata"], request.metadata or {})
        if "schedule" in given:
            updated["schedule"] = _schedule(request.schedule)
            before, after = current["schedule"], updated["schedule"]
            if before is not None and after is not None:
                after["last_run_at"] = before["last_run_at"]
            if _timing(before) != _timing(after):
                updated["_cursor"] = ids.timestamp()  # a new schedule starts from now
        if updated != current:
            updated["updated_at"] = ids.timestamp()
        return updated

    return await _changed(store, deployment_id, apply)


async def _changed(store: Store, deployment_id: str, apply: Mutation) -> Body:
    body = await store.update(KIND, deployment_id, apply)
    if body is None:
        raise NotFound(KIND, deployment_id)
    return body


async def archive(store: Store, deployment_id: str) -> Body:
    """Idempotent; an archived deployment reports ``active``, as the SDK says, paused or not."""

    def apply(current: Body) -> Body:
        if current.get("archived_at"):
            return current
        moment = ids.timestamp()
        return {
            **current,
            "archived_at": moment,
            "updated_at": moment,
            "status": "active",
            "paused_reason": None,
        }

    return await _changed(store, deployment_id, apply)


async def pause(store: Store, deployment_id: str, reason: Body | None = None) -> Body:
    """Stop scheduled fires (manual runs still work); ``reason`` defaults to a manual pause."""

    def apply(current: Body) -> Body:
        _not_archived(current)
        if current["status"] == "paused":
            return current
        moment = ids.timestamp()
        return {
            **current,
            "status": "paused",
            "paused_reason": reason or {"type": "manual"},
            "updated_at": moment,
        }

    return await _changed(store, deployment_id, apply)


async def unpause(store: Store, deployment_id: str, now: datetime | None = None) -> Body:
    """Resume scheduled fires from ``now``: times missed while paused do not fire."""

    def apply(current: Body) -> Body:
        _not_archived(current)
        if current["status"] == "active":
            return current
        moment = ids.timestamp(now)
        return {
            **current,
            "status": "active",
            "paused_reason": None,
            "updated_at": moment,
            "_cursor": moment,
        }

    return await _changed(store, deployment_id, apply)


def _timing(schedule: Body | None) -> tuple[str, str] | None:
    return None if schedule is None else (schedule["expression"], schedule["timezone"])


def render(body: Body, now: datetime | None = None) -> Body:
    """The wire shape, with the schedule's next fire times (none once archived)."""
    public = common.public(body)
    schedule = body.get("schedule")
    if schedule is not None:
        upcoming: list[str] = []
        if not body.get("archived_at"):
            try:
                cron = Cron.parse(schedule["expression"], schedule["timezone"])
            except InvalidSchedule:  # a zone this replica's time zone database lacks
                cron = None
            if cron is not None:
                upcoming = [ids.timestamp(moment) for moment in cron.upcoming(now or ids.now())]
        public["schedule"] = {**schedule, "upcoming_runs_at": upcoming}
    return public
