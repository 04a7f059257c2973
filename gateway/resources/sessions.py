"""Sessions: a snapshot of the agent version, an environment, and the event log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway import ids
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.pricing import DEFAULT_TABLE, PriceTable
from gateway.resources import agents, budgets, common, environments, files, session_resources, vaults, work
from gateway.schemas.common import apply_metadata_patch
from gateway.schemas.sessions import (
    ClientEvent,
    SessionAgentUpdate,
    SessionCreate,
    SessionUpdate,
    UserCustomToolResult,
    UserToolConfirmation,
)
from gateway.sessionlog.events import new_event
from gateway.sessionlog.outcomes import TERMINAL as OUTCOME_TERMINAL
from gateway.sessionlog.outcomes import OutcomeState
from gateway.sessionlog.transcript import Transcript
from gateway.store.base import ATTENTION_FIELD, Body, EventQuery, Store, StoredEvent
from gateway.tunnels.tokens import Sealer

KIND = "session"
STATUSES = ("idle", "running", "rescheduling", "terminated")
AGENT_SNAPSHOT_FIELDS = (
    "id",
    "type",
    "name",
    "description",
    "system",
    "model",
    "tools",
    "mcp_servers",
    "skills",
    "execution_identity",
    "multiagent",
    "version",
    "metadata",
)
"""``metadata`` carries the agent version's ``tether.*`` settings to the harness."""


def _empty_usage() -> Body:
    return {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
    }


async def create(
    store: Store,
    request: SessionCreate,
    session_id: str | None = None,
    prices: PriceTable | None = None,
    sealer: Sealer | None = None,
) -> tuple[Body, list[StoredEvent]]:
    """``session_id`` is chosen ahead by callers that must not create the session twice
    (a scheduled fire completed again after a crash); ``prices`` cost its usage (the gateway's
    table; the built-in one when not given); ``sealer`` seals repository tokens among the
    ``resources`` (callers that take none need none)."""
    if isinstance(request.agent, str):
        agent = await agents.get(store, request.agent)
    else:
        agent = await agents.get(store, request.agent.id, request.agent.version)
    if agent.get("archived_at"):
        raise InvalidRequest(f"agent: {agent['id']} is archived")
    environment = await environments.get(store, request.environment_id)
    if environment.get("archived_at"):
        raise InvalidRequest(f"environment_id: {environment['id']} is archived")
    await vaults.require_usable(store, request.vault_ids)
    snapshot = {name: agent.get(name) for name in AGENT_SNAPSHOT_FIELDS}
    return await insert(store, request, snapshot, environment, session_id, prices, sealer)


async def insert(
    store: Store,
    request: SessionCreate,
    agent: Body,
    environment: Body,
    session_id: str | None = None,
    prices: PriceTable | None = None,
    sealer: Sealer | None = None,
    internal: Body | None = None,
) -> tuple[Body, list[StoredEvent]]:
    """A session running ``agent`` (a snapshot: ``request.agent`` is not looked up) in
    ``environment``; for callers that make their own agent, such as a dream. ``internal``
    fields (names starting with ``_``) are kept on the session and never shown."""
    prices = prices or DEFAULT_TABLE
    model = str(agent["model"]["id"])
    if request.budget is not None:
        budgets.require_budgetable(prices, model)
    resources, tokens = await session_resources.build_all(store, sealer, request.resources)
    moment = ids.timestamp()
    body: Body = {
        "type": "session",
        "id": session_id or ids.new_id(ids.SESSION),
        "agent": agent,
        "environment_id": environment["id"],
        "title": request.title,
        "metadata": request.metadata,
        "status": "idle",
        "usage": {**_empty_usage(), **budgets.opening_usage(prices, model)},
        "budget": request.budget.model_dump() if request.budget is not None else None,
        "resources": resources,
        session_resources.TOKENS: tokens,
        "vault_ids": request.vault_ids,
        "outcome_evaluations": [],
        "created_at": moment,
        "updated_at": moment,
        "archived_at": None,
        **(internal or {}),
    }
    await store.insert(KIND, body)
    if environment["config"]["type"] == "self_hosted":
        # The session's tools run on-prem: a worker in that network picks this up.
        await work.enqueue(store, environment["id"], body["id"])
    initial = [
        new_event("user.message", **event.model_dump(exclude_none=True)) for event in request.initial_events
    ]
    stored = await store.append_events(body["id"], initial) if initial else []
    return body, stored


async def get(store: Store, session_id: str) -> Body:
    return await common.fetch(store, KIND, session_id)


def render(body: Body) -> Body:
    """The wire shape: adds the derived ``stats`` and Tether's ``tether_attention`` (why the
    session waits for an operator, or null; the store keeps it as the log is appended)."""
    created = datetime.fromisoformat(body["created_at"])
    end = datetime.fromisoformat(body["archived_at"]) if body.get("archived_at") else ids.now()
    return {
        ATTENTION_FIELD: None,
        **common.public(body),
        "stats": {"duration_seconds": round((end - created).total_seconds(), 3)},
    }


async def update(
    store: Store, session_id: str, request: SessionUpdate, prices: PriceTable | None = None
) -> Body:
    """Apply the update and log what changed as ``session.updated``; a new agent configuration
    applies from the next turn (the harness reads the session's agent when a run starts)."""
    if request.vault_ids is not None:
        await vaults.require_usable(store, request.vault_ids)
    before: list[Body] = []

    def apply(current: Body) -> Body:
        before[:] = [current]
        updated = dict(current)
        fields = request.model_fields_set
        if request.agent is not None:
            updated["agent"] = _agent_update(current, request.agent)
        if "title" in fields:
            updated["title"] = request.title
        if "metadata" in fields:
            updated["metadata"] = apply_metadata_patch(current["metadata"], request.metadata or {})
        if request.vault_ids is not None:
            updated["vault_ids"] = request.vault_ids
        if "budget" in fields:
            budget = request.budget.model_dump() if request.budget is not None else None
            updated = budgets.replaced(updated, budget, prices or DEFAULT_TABLE)
        if updated != current:
            updated["updated_at"] = ids.timestamp()
        return updated

    body = await store.update(KIND, session_id, apply)
    if body is None:
        raise NotFound("session", session_id)
    changes = _changes(before[-1], body)
    if changes is not None:
        await store.append_events(session_id, [new_event("session.updated", **changes)])
    return body


def _agent_update(session: Body, change: SessionAgentUpdate) -> Body:
    """The session's agent snapshot with ``tools``/``mcp_servers`` replaced, checked like an
    agent's. Refused while a turn runs: the SDK allows it only when the session is not running."""
    current = session["agent"]
    if change.tools is None and change.mcp_servers is None:
        return current
    if session["status"] in ("running", "rescheduling"):
        raise Conflict(
            f"session {session['id']} is {session['status']}; its agent can be updated once it is idle"
        )
    tools, servers = agents.replace_tools(current, change.tools, change.mcp_servers)
    return {**current, "tools": tools, "mcp_servers": servers}


def _changes(before: Body, after: Body) -> Body | None:
    """The fields of ``session.updated`` as the SDK describes them (only what changed; metadata
    in full unless emptied; the agent as its whole new snapshot), or None if nothing did."""
    fields = ("title", "metadata", "agent", "budget")
    if all(after.get(name) == before.get(name) for name in fields):
        return None
    changes = {name: after.get(name) for name in fields if after.get(name) != before.get(name)}
    if not changes.get("metadata", True):
        del changes["metadata"]
    return changes


async def archive(store: Store, session_id: str) -> Body:
    """Archive the session; a self-hosted worker is told to stop its on-prem sandbox."""
    body = await common.archive(store, KIND, session_id)
    await work.stop_for_session(store, session_id)
    return body


async def delete(store: Store, session_id: str) -> None:
    """Drop the session, its log and its file records (the workspace is the sandbox pool's, or
    a self-hosted worker's: its work item is stopped so the worker stops the sandbox)."""
    await work.stop_for_session(store, session_id)
    outputs = await store.list_resources(
        files.KIND,
        cursor=None,
        limit=files.MAX_FILES_PER_SESSION,
        include_archived=True,
        equals={"scope.id": session_id},
    )
    for record in outputs.items:
        await store.delete(files.KIND, record["id"])
    await store.delete(KIND, session_id)


async def add_usage(
    store: Store, session_id: str, usage: dict[str, int], prices: PriceTable | None = None
) -> None:
    """Add one model call's tokens, and its list cost at ``prices``, to the session's totals."""

    def add(body: Body) -> Body:
        total = body.get("usage") or _empty_usage()
        cache = total.get("cache_creation") or {}
        counted = {
            **body,
            "usage": {
                **total,
                "input_tokens": (total.get("input_tokens") or 0) + usage["input_tokens"],
                "output_tokens": (total.get("output_tokens") or 0) + usage["output_tokens"],
                "cache_read_input_tokens": (total.get("cache_read_input_tokens") or 0)
                + usage["cache_read_input_tokens"],
                "cache_creation": {
                    "ephemeral_5m_input_tokens": (cache.get("ephemeral_5m_input_tokens") or 0)
                    + usage["cache_creation_input_tokens"],
                    "ephemeral_1h_input_tokens": cache.get("ephemeral_1h_input_tokens") or 0,
                },
            },
        }
        return budgets.charged(counted, usage, prices or DEFAULT_TABLE)

    await store.update(KIND, session_id, add)


async def accept_events(store: Store, session: Body, events: list[Any]) -> list[StoredEvent]:
    """Check client events against the session's state, then append them in one batch."""
    if session.get("archived_at"):
        raise InvalidRequest(f"session {session['id']} is archived")
    if session["status"] == "terminated":
        raise InvalidRequest(f"session {session['id']} is terminated")
    if any(isinstance(event, UserToolConfirmation | UserCustomToolResult) for event in events):
        # Only answers to pending tool calls need the session's state to be checked.
        transcript = await _transcript_since_calls(store, session["id"], events)
        pending = {call.id: call for call in transcript.pending()}
        answered: set[str] = set()
        for index, event in enumerate(events):
            _check_event(index, event, pending, answered, transcript)
    bodies = [new_event(e.type, **e.model_dump(exclude_none=True, exclude={"type"})) for e in events]
    defined = [body for body in bodies if body["type"] == "user.define_outcome"]
    if defined:
        _one_outcome_at_a_time(session, [_with_outcome_id(body) for body in defined])
    return await append_input(store, session["id"], bodies)


async def append_input(store: Store, session_id: str, bodies: list[Body]) -> list[StoredEvent]:
    """Append client input (checked already) in one batch: an outcome it defines gets its id
    and a ``pending`` entry on the session (unless the harness has already said more)."""
    defined = [_with_outcome_id(body) for body in bodies if body["type"] == "user.define_outcome"]
    stored = await store.append_events(session_id, bodies)
    for body in defined:
        await record_outcome(store, session_id, OutcomeState(body, 0, 0).entry(working=False), replace=False)
    return stored


def _with_outcome_id(body: Body) -> Body:
    """A ``user.define_outcome`` gets its ``outc_`` id from its event id, so an event appended
    again after a crash (same id) names the same outcome."""
    body["outcome_id"] = "outc_" + body["id"].split("_", 1)[1]
    return body


def _one_outcome_at_a_time(session: Body, defined: list[Body]) -> None:
    active = [e for e in session.get("outcome_evaluations") or [] if e["result"] not in OUTCOME_TERMINAL]
    if active or len(defined) > 1:
        raise InvalidRequest(
            "user.define_outcome: the session already works towards an outcome "
            f"({(active or defined)[0]['outcome_id']}); send it once that one has a result"
        )


async def record_outcome(
    store: Store, session_id: str, entry: Body, replace: bool = True, supersede: bool = False
) -> None:
    """Put ``entry`` in the session's ``outcome_evaluations``: replacing the same outcome's
    (unless ``replace`` is False), and with ``supersede`` closing any other still open, which
    a later outcome replaced (two defined at once can race past the one-at-a-time check)."""

    def put(body: Body) -> Body:
        entries = list(body.get("outcome_evaluations") or [])
        if not replace and any(e["outcome_id"] == entry["outcome_id"] for e in entries):
            return body
        kept = []
        for e in entries:
            if e["outcome_id"] == entry["outcome_id"]:
                continue
            if supersede and e["result"] not in OUTCOME_TERMINAL:
                e = {
                    **e,
                    "result": "interrupted",
                    "explanation": "A later outcome replaced it.",
                    "completed_at": ids.timestamp(),
                }
            kept.append(e)
        return {**body, "outcome_evaluations": [*kept, entry]}

    await store.update(KIND, session_id, put)


async def _transcript_since_calls(store: Store, session_id: str, events: list[Any]) -> Transcript:
    """The log from the oldest tool use these answers name: all that decides whether they are
    still open (its result, a confirmation, an interrupt come after it), without reading a long
    session's whole log on every answer."""
    named = {
        e.tool_use_id if isinstance(e, UserToolConfirmation) else e.custom_tool_use_id
        for e in events
        if isinstance(e, UserToolConfirmation | UserCustomToolResult)
    }
    seqs = [seq for use_id in named if (seq := await store.event_seq(session_id, use_id)) is not None]
    if not seqs:
        return Transcript.from_events([])
    return Transcript.from_events(await store.read_events(session_id, EventQuery(after_seq=min(seqs) - 1)))


def _check_event(
    index: int, event: ClientEvent, pending: dict[str, Any], answered: set[str], transcript: Transcript
) -> None:
    where = f"events.{index}"
    if isinstance(event, UserToolConfirmation):
        call = pending.get(event.tool_use_id)
        if call is None or call.kind == "custom" or call.permission != "ask":
            why = _closed(transcript, event.tool_use_id) or "is not a tool use awaiting confirmation"
            raise InvalidRequest(f"{where}.tool_use_id: {event.tool_use_id!r} {why}")
        if call.confirmation is not None or event.tool_use_id in answered:
            raise InvalidRequest(f"{where}.tool_use_id: {event.tool_use_id!r} was already confirmed")
        answered.add(event.tool_use_id)
    elif isinstance(event, UserCustomToolResult):
        call = pending.get(event.custom_tool_use_id)
        if call is None or call.kind != "custom":
            why = (
                _closed(transcript, event.custom_tool_use_id) or "is not a custom tool use awaiting a result"
            )
            raise InvalidRequest(f"{where}.custom_tool_use_id: {event.custom_tool_use_id!r} {why}")
        if event.custom_tool_use_id in answered:
            raise InvalidRequest(
                f"{where}.custom_tool_use_id: {event.custom_tool_use_id!r} is answered twice"
            )
        answered.add(event.custom_tool_use_id)


def _closed(transcript: Transcript, use_id: str) -> str | None:
    """Why a tool use of this session takes no answer any more (an interrupt closed it, or it
    has its result), or None when it is not one."""
    call = transcript.calls.get(use_id)
    if call is None:
        return None
    if call.result is not None:
        texts = [b["text"] for b in call.result.get("content") or [] if b.get("type") == "text"]
        return "already has a result" + (f": {texts[0]}" if texts else "")
    if call.seq < transcript.last_interrupt_seq:
        return "was interrupted (user.interrupt) and takes no answer any more"
    return None
