"""Deployments and deployment runs, driven through the official ``anthropic`` SDK.

Every response is parsed from its raw JSON with strict pydantic validation against the SDK's
own models, and must carry no field the SDK does not define: the SDK's lenient parsing would
otherwise turn a missing or misshapen field into ``None`` and let the test pass.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import anthropic
import pytest
from anthropic.types.beta.beta_managed_agents_deployment import BetaManagedAgentsDeployment as Deployment
from anthropic.types.beta.beta_managed_agents_deployment_run import BetaManagedAgentsDeploymentRun as Run
from pydantic import BaseModel

from tests.conftest import Scripts
from tests.support.self_hosted import eventually
from tests.support.sessions import strictly_valid, user_message

M = TypeVar("M", bound=BaseModel)

MODEL = "claude-scripted"
MISSING_DEPLOYMENT = "depl_doesnotexist000000000000"
WEEKDAYS_AT_NINE = {"type": "cron", "expression": "0 9 * * 1-5", "timezone": "America/New_York"}
LEAP_DAYS = {"type": "cron", "expression": "30 4 29 2 *", "timezone": "America/New_York"}
"""A schedule that will not fire while a test compares two reads of its deployment."""
OUTCOME = {
    "type": "user.define_outcome",
    "description": "a report",
    "rubric": {"type": "text", "content": "ok"},
}
SYSTEM = {"type": "system.message", "content": [{"type": "text", "text": "be terse"}]}
BUDGET = {"type": "limit", "max_list_cost": {"amount": "2500", "currency": "EUR"}}
MISSING_IMAGE = {"type": "image", "source": {"type": "file", "file_id": "file_doesnotexist00000000000"}}
BAD_EXPRESSIONS = [
    "@daily",
    "0 9 * * L",
    "0 9 15W * *",
    "0 9 * * 5#2",
    "0 9 ? * *",
    "61 * * * *",
    "0 0 9 * * *",
]


def _no_extras(value: Any) -> None:
    """Fail on any field, at any depth, that the SDK's models do not define."""
    if isinstance(value, BaseModel):
        assert not value.model_extra, f"{type(value).__name__} has unknown fields {value.model_extra}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name))
    elif isinstance(value, list | dict):
        for item in value.values() if isinstance(value, dict) else value:
            _no_extras(item)


def strict_json(model: type[M], text: str) -> M:
    value = model.model_validate_json(text, strict=True)
    _no_extras(value)
    return value


def raw_and_strict(model: type[M], response: Any) -> tuple[dict[str, Any], M]:
    """The raw JSON of a ``with_raw_response`` call, and it strictly validated as ``model``."""
    assert response.http_response.status_code == 200, response.http_response.text
    return response.http_response.json(), strict_json(model, response.http_response.text)


def strict_page(model: type[M], response: Any) -> tuple[list[M], str | None]:
    body = response.http_response.json()
    assert set(body) >= {"data", "next_page"}, body
    return [strict_json(model, json.dumps(item)) for item in body["data"]], body["next_page"]


def refused(call: Callable[[], Any], status: int = 400, error_type: str = "invalid_request_error") -> str:
    """Assert the call fails with the Anthropic error shape; return the message."""
    with pytest.raises(anthropic.APIStatusError) as caught:
        call()
    body = caught.value.response.json()
    assert caught.value.status_code == status, body
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == error_type, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def new_agent(client: anthropic.Anthropic, system: str = "deployments") -> str:
    return client.beta.agents.create(name=unique("agent"), model=MODEL, system=system).id


def new_version(client: anthropic.Anthropic, agent_id: str) -> None:
    assert client.beta.agents.update(agent_id, version=1, name=unique("agent v2")).version == 2


def raw_deploy(client: anthropic.Anthropic, agent: Any, environment_id: str, **params: Any) -> Any:
    params.setdefault("name", unique("depl"))
    params.setdefault("initial_events", [user_message("go")])
    return client.beta.deployments.with_raw_response.create(
        agent=agent, environment_id=environment_id, **params
    )


def deploy(client: anthropic.Anthropic, agent: Any, environment_id: str, **params: Any) -> Deployment:
    return raw_and_strict(Deployment, raw_deploy(client, agent, environment_id, **params))[1]


def call(client: anthropic.Anthropic, method: str, *args: Any, **params: Any) -> Any:
    """``client.beta.deployments.with_raw_response.<method>(...)``."""
    return getattr(client.beta.deployments.with_raw_response, method)(*args, **params)


def do(client: anthropic.Anthropic, method: str, deployment_id: str, **params: Any) -> Deployment:
    """retrieve, update, pause, unpause or archive, strictly parsed."""
    return raw_and_strict(Deployment, call(client, method, deployment_id, **params))[1]


def run(client: anthropic.Anthropic, deployment_id: str) -> Run:
    return raw_and_strict(Run, call(client, "run", deployment_id))[1]


def listed(client: anthropic.Anthropic, **params: Any) -> list[str]:
    deployments, next_page = strict_page(Deployment, call(client, "list", **params))
    assert next_page is None
    return [d.id for d in deployments]


def runs(client: anthropic.Anthropic, **params: Any) -> list[str]:
    found, next_page = strict_page(Run, client.beta.deployment_runs.with_raw_response.list(**params))
    assert next_page is None
    return [r.id for r in found]


def wait_for_reply(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    """Poll until the session is idle and its log holds an ``agent.message``; return the log."""

    def done() -> list[dict[str, Any]] | None:
        if client.beta.sessions.retrieve(session_id).status != "idle":
            return None
        body = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000).http_response.json()
        events: list[dict[str, Any]] = body["data"]
        return events if any(e["type"] == "agent.message" for e in events) else None

    events = eventually(done, f"session {session_id} to answer", timeout=30)
    strictly_valid(events)
    return events


# --- create -----------------------------------------------------------------------------------


def test_create_pins_the_latest_agent_version_and_renders_every_field(
    client: anthropic.Anthropic, environment: Any
) -> None:
    agent_id = new_agent(client)
    new_version(client, agent_id)
    vault = client.beta.vaults.create(display_name=unique("vault"))
    events = [user_message("first"), user_message("second")]
    before = datetime.now(UTC)

    params = {"name": "nightly", "description": "does things", "metadata": {"team": "infra"}}
    response = raw_deploy(
        client, agent_id, environment.id, initial_events=events, vault_ids=[vault.id], **params
    )
    raw, created = raw_and_strict(Deployment, response)

    assert created.id.startswith("depl_") and created.type == "deployment"
    assert raw["agent"] == {"type": "agent", "id": agent_id, "version": 2}
    assert {key: raw[key] for key in params} == params and created.environment_id == environment.id
    assert created.status == "active"
    for key in ("paused_reason", "archived_at", "schedule"):
        assert raw.get(key, "absent") is None, key
    assert raw.get("budget") is None
    assert raw["initial_events"] == events
    assert (created.vault_ids, created.resources, created.metadata) == ([vault.id], [], {"team": "infra"})
    assert before <= created.created_at == created.updated_at
    assert do(client, "retrieve", created.id) == created
    pinned = deploy(client, {"type": "agent", "id": agent_id, "version": 1}, environment.id)
    assert (pinned.agent.id, pinned.agent.version) == (agent_id, 1)


def test_schedule_lists_five_upcoming_runs_in_its_time_zone(
    client: anthropic.Anthropic, environment: Any
) -> None:
    before = datetime.now(UTC)
    raw, created = raw_and_strict(
        Deployment, raw_deploy(client, new_agent(client), environment.id, schedule=WEEKDAYS_AT_NINE)
    )
    schedule = created.schedule

    assert schedule is not None
    assert {k: raw["schedule"][k] for k in ("type", "expression", "timezone")} == WEEKDAYS_AT_NINE
    assert "last_run_at" in raw["schedule"] and schedule.last_run_at is None
    upcoming = schedule.upcoming_runs_at or []
    assert len(upcoming) == 5 and upcoming == sorted(set(upcoming))
    assert all(moment > before for moment in upcoming)
    for moment in upcoming:
        local = moment.astimezone(ZoneInfo("America/New_York"))
        assert (local.hour, local.minute, local.second, local.weekday() < 5) == (9, 0, 0, True), local


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"initial_events": []}, "initial_events"),
        ({"initial_events": [user_message("x")] * 51}, "initial_events"),
        ({"initial_events": [{**OUTCOME, "max_iterations": 21}]}, "max_iterations"),
        ({"initial_events": [OUTCOME, OUTCOME]}, "one user.define_outcome"),
        ({"initial_events": [SYSTEM, user_message("x")]}, "last event"),
        ({"budget": BUDGET}, "currency"),
        ({"resources": [{"type": "file", "file_id": "file_0123"}]}, "resources"),
        *[
            ({"schedule": {"type": "cron", "expression": e, "timezone": "UTC"}}, "schedule")
            for e in BAD_EXPRESSIONS
        ],
        (
            {"schedule": {"type": "cron", "expression": "0 9 * * *", "timezone": "Mars/Olympus"}},
            "Mars/Olympus",
        ),
        ({"schedule": {"type": "cron", "expression": "0 9 * * *", "timezone": "America"}}, "America"),
        ({"schedule": {"type": "cron", "expression": "0 9 * * *", "timezone": "localtime"}}, "localtime"),
        ({"initial_events": [{"type": "user.message", "content": [MISSING_IMAGE]}]}, "file_"),
        ({"name": ""}, "name"),
        ({"extra_body": {"colour": "red"}}, "colour"),
    ],
)
def test_create_refuses_what_it_cannot_run(
    client: anthropic.Anthropic, environment: Any, overrides: dict[str, Any], says: str
) -> None:
    agent_id = new_agent(client)

    message = refused(lambda: deploy(client, agent_id, environment.id, **overrides))

    assert says in message
    assert listed(client, agent_id=agent_id, include_archived=True) == []


def test_create_refuses_unknown_or_archived_references(client: anthropic.Anthropic, environment: Any) -> None:
    agent_id = new_agent(client)
    refused(lambda: deploy(client, "agent_doesnotexist000000000000", environment.id), 404, "not_found_error")
    refused(lambda: deploy(client, agent_id, "env_doesnotexist000000000000"), 404, "not_found_error")
    client.beta.agents.archive(agent_id)
    refused(lambda: deploy(client, agent_id, environment.id))
    refused(lambda: client.beta.deployments.retrieve(MISSING_DEPLOYMENT), 404, "not_found_error")


# --- update -----------------------------------------------------------------------------------


def test_update_patches_and_clears(client: anthropic.Anthropic, environment: Any) -> None:
    metadata = {"keep": "1", "change": "2", "drop": "3"}
    agent_id = new_agent(client)
    created = deploy(client, agent_id, environment.id, description="d", metadata=metadata, schedule=LEAP_DAYS)
    patch = {"metadata": {"change": "two", "drop": None, "add": "4"}, "description": None, "schedule": None}

    raw, updated = raw_and_strict(Deployment, call(client, "update", created.id, **patch))

    assert updated.metadata == {"keep": "1", "change": "two", "add": "4"}
    assert raw["description"] is None and raw["schedule"] is None
    kept = {"name", "agent", "initial_events", "environment_id"}
    assert updated.model_dump(include=kept) == created.model_dump(include=kept)
    assert updated.created_at == created.created_at and updated.updated_at > created.updated_at
    renamed = do(client, "update", created.id, name="renamed", initial_events=[user_message("new")])
    assert renamed.name == "renamed" and renamed.metadata == updated.metadata
    assert [e.model_dump(exclude_none=True) for e in renamed.initial_events] == [user_message("new")]
    assert do(client, "retrieve", created.id) == renamed
    refused(lambda: client.beta.deployments.update(created.id, name=""))
    refused(lambda: client.beta.deployments.update(MISSING_DEPLOYMENT, name="x"), 404, "not_found_error")


def test_update_with_the_agent_id_repins_to_the_latest_version(
    client: anthropic.Anthropic, environment: Any
) -> None:
    agent_id = new_agent(client)
    created = deploy(client, agent_id, environment.id)
    new_version(client, agent_id)

    assert do(client, "retrieve", created.id).agent.version == 1
    repinned = do(client, "update", created.id, agent=agent_id)
    assert (repinned.agent.id, repinned.agent.version) == (agent_id, 2)
    back = do(client, "update", created.id, agent={"type": "agent", "id": agent_id, "version": 1})
    assert back.agent.version == 1


# --- list, pause, archive ---------------------------------------------------------------------


def test_list_filters_by_agent_status_and_archival(client: anthropic.Anthropic, environment: Any) -> None:
    agent_id = new_agent(client)
    active, paused, archived = (deploy(client, agent_id, environment.id).id for _ in range(3))
    do(client, "pause", paused)
    do(client, "archive", archived)

    assert set(listed(client, agent_id=agent_id)) == {active, paused}
    assert set(listed(client, agent_id=agent_id, include_archived=True)) == {active, paused, archived}
    assert listed(client, agent_id=agent_id, status="paused") == [paused]
    assert listed(client, agent_id=agent_id, status="active") == [active]
    assert listed(client, agent_id=new_agent(client)) == []
    refused(lambda: client.beta.deployments.list(status="paused", include_archived=True))
    refused(lambda: client.beta.deployments.list(limit=101))


def test_list_paginates(client: anthropic.Anthropic, environment: Any) -> None:
    agent_id = new_agent(client)
    created = {deploy(client, agent_id, environment.id).id for _ in range(3)}

    first, next_page = strict_page(Deployment, call(client, "list", agent_id=agent_id, limit=1))
    walked = [d.id for d in client.beta.deployments.list(agent_id=agent_id, limit=1)]

    assert len(first) == 1 and first[0].id in created and next_page is not None
    assert len(walked) == 3 and set(walked) == created


def test_pause_and_unpause(client: anthropic.Anthropic, environment: Any) -> None:
    created = deploy(client, new_agent(client), environment.id, schedule=LEAP_DAYS)

    raw, paused = raw_and_strict(Deployment, call(client, "pause", created.id))
    assert paused.status == "paused" and raw["paused_reason"] == {"type": "manual"}
    assert paused.schedule is not None and len(paused.schedule.upcoming_runs_at or []) == 5
    assert do(client, "retrieve", created.id) == paused

    unpaused = do(client, "unpause", created.id)
    assert unpaused.status == "active" and unpaused.paused_reason is None
    assert do(client, "retrieve", created.id) == unpaused


def test_archive_freezes_the_deployment(client: anthropic.Anthropic, environment: Any) -> None:
    created = deploy(client, new_agent(client), environment.id, schedule=LEAP_DAYS)
    do(client, "pause", created.id)

    archived = do(client, "archive", created.id)

    # "Archived deployments report `active` with `archived_at` set", paused before or not.
    assert archived.archived_at is not None and archived.status == "active"
    assert archived.paused_reason is None
    assert archived.schedule is not None and archived.schedule.upcoming_runs_at == []
    assert archived.schedule.expression == LEAP_DAYS["expression"]
    assert do(client, "retrieve", created.id) == archived
    refused(lambda: client.beta.deployments.pause(created.id))
    refused(lambda: client.beta.deployments.unpause(created.id))
    refused(lambda: client.beta.deployments.run(created.id))
    refused(lambda: client.beta.deployments.update(created.id, name="too late"))
    assert do(client, "retrieve", created.id) == archived


# --- runs -------------------------------------------------------------------------------------


def test_a_manual_run_of_a_paused_deployment_starts_a_session_on_the_pinned_version(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "deployed hello"}]}])
    agent_id = new_agent(client, system=marker)
    deployment = deploy(
        client, agent_id, environment.id, initial_events=[user_message("hello from a deployment")]
    )
    new_version(client, agent_id)
    do(client, "pause", deployment.id)
    before = datetime.now(UTC)

    raw, started = raw_and_strict(Run, call(client, "run", deployment.id))

    assert started.id.startswith("drun_") and started.type == "deployment_run"
    assert (started.deployment_id, raw["agent"]) == (
        deployment.id,
        {"type": "agent", "id": agent_id, "version": 1},
    )
    assert "error" in raw and raw["error"] is None
    assert raw["trigger_context"] == {"type": "manual"} and started.created_at >= before
    assert started.session_id is not None
    session = client.beta.sessions.retrieve(started.session_id)
    assert (session.agent.id, session.agent.version, session.environment_id) == (agent_id, 1, environment.id)

    events = wait_for_reply(client, started.session_id)
    assert events[0]["type"] == "user.message"
    assert events[0]["content"] == [{"type": "text", "text": "hello from a deployment"}]
    replies = [e["content"] for e in events if e["type"] == "agent.message"]
    assert replies == [[{"type": "text", "text": "deployed hello"}]]
    assert len(scripts.requests_for(marker)) == 1
    assert (
        raw_and_strict(Run, client.beta.deployment_runs.with_raw_response.retrieve(started.id))[1] == started
    )
    still = do(client, "retrieve", deployment.id)
    assert (
        still.status == "paused" and still.paused_reason is not None and still.paused_reason.type == "manual"
    )


def test_a_failed_run_records_the_error_and_leaves_the_deployment_active(client: anthropic.Anthropic) -> None:
    environment = client.beta.environments.create(name=unique("env"))
    agent_id = new_agent(client)
    no_agent = deploy(client, agent_id, environment.id)
    no_environment = deploy(client, new_agent(client), environment.id)
    client.beta.agents.archive(agent_id)

    raw, failed = raw_and_strict(Run, call(client, "run", no_agent.id))

    assert "session_id" in raw and raw["session_id"] is None
    assert failed.error is not None and failed.error.type == "agent_archived_error" and failed.error.message
    assert (failed.agent, failed.deployment_id) == (no_agent.agent, no_agent.id)
    after = do(client, "retrieve", no_agent.id)
    assert after.status == "active" and after.paused_reason is None
    assert raw_and_strict(Run, client.beta.deployment_runs.with_raw_response.retrieve(failed.id))[1] == failed

    client.beta.environments.archive(environment.id)
    failed = run(client, no_environment.id)
    assert failed.session_id is None
    assert (
        failed.error is not None
        and failed.error.type == "environment_archived_error"
        and failed.error.message
    )
    assert do(client, "retrieve", no_environment.id).status == "active"


def test_deployment_runs_list_filters(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "ran"}]}])
    agent_id = new_agent(client, system=marker)
    deployment = deploy(client, agent_id, environment.id)
    succeeded = run(client, deployment.id)
    assert succeeded.session_id is not None
    wait_for_reply(client, succeeded.session_id)
    client.beta.agents.archive(agent_id)
    failed = run(client, deployment.id)
    assert failed.error is not None and succeeded.created_at < failed.created_at
    mine: dict[str, Any] = {"deployment_id": deployment.id}

    assert set(runs(client, **mine)) == {succeeded.id, failed.id}
    assert runs(client, **mine, has_error=True) == [failed.id]
    assert runs(client, **mine, has_error=False) == [succeeded.id]
    assert set(runs(client, **mine, trigger_type="manual")) == {succeeded.id, failed.id}
    assert runs(client, **mine, trigger_type="schedule") == []
    assert runs(client, **mine, created_at_gte=failed.created_at) == [failed.id]
    assert runs(client, **mine, created_at_lt=failed.created_at) == [succeeded.id]
    assert runs(client, deployment_id=MISSING_DEPLOYMENT) == []
    walked = [r.id for r in client.beta.deployment_runs.list(**mine, limit=1)]
    assert len(walked) == 2 and set(walked) == {succeeded.id, failed.id}
    assert {succeeded.id, failed.id} <= set(runs(client, limit=1000))
    refused(lambda: client.beta.deployment_runs.list(limit=1001))
    refused(
        lambda: client.beta.deployment_runs.retrieve("drun_doesnotexist000000000000"), 404, "not_found_error"
    )
