"""Deployment runs: one record per fire of a deployment, holding the session it created or
the reason it could not (the SDK's run error types), never both.

``fire`` may be called again for the same run after a crash (a scheduled fire's ids are chosen
when it is claimed): a session that already exists is not created twice, and its initial
events are appended only if its log is still empty.
"""

from __future__ import annotations

from gateway import ids
from gateway.errors import InvalidRequest, TetherError
from gateway.pricing import PriceTable
from gateway.resources import common, sessions, uploads, work
from gateway.schemas.sessions import (
    AgentReference,
    SessionCreate,
    UserDefineOutcome,
    UserMessage,
    file_references,
)
from gateway.sessionlog.events import new_event
from gateway.store.base import Body, Store

KIND = "deployment_run"
PREFIX = "drun"


class RunError(Exception):
    """Why a fire created no session, as the run's ``error`` object."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.body: Body = {"type": error_type, "message": message}


async def _check_references(store: Store, deployment: Body) -> None:
    agent = await store.get("agent", deployment["agent"]["id"])
    if agent is None or agent.get("archived_at"):
        raise RunError("agent_archived_error", f"agent {deployment['agent']['id']} is archived or gone")
    environment = await store.get("environment", deployment["environment_id"])
    if environment is None:
        raise RunError("environment_not_found_error", f"environment {deployment['environment_id']} not found")
    if environment.get("archived_at"):
        raise RunError("environment_archived_error", f"environment {environment['id']} is archived")
    for vault_id in deployment["vault_ids"]:
        vault = await store.get("vault", vault_id)
        if vault is None:
            raise RunError("vault_not_found_error", f"vault {vault_id} not found")
        if vault.get("archived_at"):
            raise RunError("vault_archived_error", f"vault {vault_id} is archived")
    parsers: dict[str, type[UserMessage] | type[UserDefineOutcome]] = {
        "user.message": UserMessage,
        "user.define_outcome": UserDefineOutcome,
    }
    messages = [
        parsers[e["type"]].model_validate(e) for e in deployment["initial_events"] if e["type"] in parsers
    ]
    try:
        await uploads.require_usable(store, file_references(messages))
    except InvalidRequest as exc:  # deleted or expired since the deployment was saved
        raise RunError("file_not_found_error", exc.message) from None


async def _start_session(
    store: Store, deployment: Body, session_id: str, event_ids: list[str], prices: PriceTable | None
) -> None:
    """Create the session, then append its initial events in one batch: a turn never starts
    before a ``system.message`` meant for it has landed. Run again for the same fire (after a
    crash, or by a replica taking it over), it creates and appends only what is missing: the
    events' ids are the fire's own, so a second append of them fails instead of doubling them."""
    session = await store.get(sessions.KIND, session_id)
    if session is not None:
        await _ensure_work(store, session)
    else:
        pinned = deployment["agent"]
        request = SessionCreate(
            agent=AgentReference(type="agent", id=pinned["id"], version=pinned["version"]),
            environment_id=deployment["environment_id"],
            title=deployment["name"],
            vault_ids=deployment["vault_ids"],
            budget=deployment.get("budget"),  # stamped onto each session; re-checked for the model
        )
        try:
            await sessions.create(store, request, session_id=session_id, prices=prices)
        except TetherError as exc:
            if exc.status_code >= 500:
                raise
            raise RunError("session_creation_rejected_error", exc.message) from None
    if await store.last_seq(session_id) == 0:  # not yet appended (or a crash came first)
        events = [
            new_event(event["type"], **{k: v for k, v in event.items() if k != "type"}, id=event_id)
            for event, event_id in zip(deployment["initial_events"], event_ids, strict=True)
        ]
        await sessions.append_input(store, session_id, events)


async def _ensure_work(store: Store, session: Body) -> None:
    """A self-hosted session needs its work item; a crash may have come between the two."""
    environment = await store.get("environment", session["environment_id"])
    if environment is None or environment["config"]["type"] != "self_hosted":
        return
    queued = await store.list_resources(
        work.KIND, cursor=None, limit=1, include_archived=True, equals={"data.id": session["id"]}
    )
    if not queued.items:
        await work.enqueue(store, environment["id"], session["id"])


async def fire(
    store: Store,
    deployment: Body,
    trigger_context: Body,
    run_id: str | None = None,
    session_id: str | None = None,
    event_ids: list[str] | None = None,
    prices: PriceTable | None = None,
) -> Body:
    """Create the deployment's session and record the run; a run that already exists is returned.

    A fire completed again whose session exists is recorded as that session's run, whatever
    became of the agent, environment or vaults since: the session is running."""
    run_id = run_id or ids.new_id(PREFIX)
    if (existing := await store.get(KIND, run_id)) is not None:
        return existing
    session_id = session_id or ids.new_id(ids.SESSION)
    event_ids = event_ids or [ids.new_id(ids.EVENT) for _ in deployment["initial_events"]]
    error: Body | None = None
    try:
        if await store.get(sessions.KIND, session_id) is None:
            await _check_references(store, deployment)
        await _start_session(store, deployment, session_id, event_ids, prices)
    except RunError as exc:
        error = exc.body
    run: Body = {
        "type": "deployment_run",
        "id": run_id,
        "deployment_id": deployment["id"],
        "agent": deployment["agent"],
        "session_id": None if error else session_id,
        "error": error,
        "trigger_context": trigger_context,
        "created_at": ids.timestamp(),
    }
    await store.insert(KIND, run)
    return run


async def get(store: Store, run_id: str) -> Body:
    return await common.fetch(store, KIND, run_id)
