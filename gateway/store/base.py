"""The storage interface: resources as JSON documents, and the append-only session log.

SQLite implements it today; a PostgreSQL backend implements the same protocol
later. Domain code depends only on this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.store.chain import ChainLink

Body = dict[str, Any]

SESSION_STATUS_OF_EVENT = {
    "session.status_running": "running",
    "session.status_idle": "idle",
    "session.status_rescheduled": "rescheduling",
    "session.status_terminated": "terminated",
}
"""Status events move the session's ``status`` in the same transaction that logs them, so a
client never sees the event while the session still reports the old status."""


WAKES_HARNESS = frozenset(
    {
        "user.message",
        "user.interrupt",
        "user.tool_confirmation",
        "user.custom_tool_result",
        "user.define_outcome",
    }
)
"""Client events the harness must look at. Appending one records a durable wake-up in the same
transaction, so input accepted just before a crash is still found by pickup afterwards."""


def status_after(events: Sequence[Body]) -> str | None:
    """The session status a batch of events leaves behind, if it contains a status event."""
    status = None
    for event in events:
        status = SESSION_STATUS_OF_EVENT.get(event["type"], status)
    return status


ATTENTION_FIELD = "tether_attention"
"""Why a session needs an operator (``requires_action``, ``retries_exhausted``,
``budget_reached``, ``error``) or null: kept on the session by the append that logs the
reason, so lists filter on it cheaply."""


def attention_after(events: Sequence[Body]) -> tuple[bool, str | None] | None:
    """What a batch of events does to ``ATTENTION_FIELD``: None leaves it; ``(keep_error,
    value)`` sets ``value``, except that with ``keep_error`` a stored ``error`` stays (an idle
    ``end_turn`` ends a wait for confirmation, but not the trace of an error in that turn)."""
    change: tuple[bool, str | None] | None = None
    for event in events:
        step = _attention_step(event)
        if step is None:
            continue
        if change is None or not step[0]:
            change = step
        else:
            change = (change[0], change[1] if change[1] == "error" else None)
    return change


def _attention_step(event: Body) -> tuple[bool, str | None] | None:
    kind = event["type"]
    if kind in ("session.status_running", "session.status_rescheduled"):
        return (False, None)
    if kind == "session.status_idle":
        reason = (event.get("stop_reason") or {}).get("type")
        waits = ("requires_action", "retries_exhausted", "budget_reached")
        return (False, reason) if reason in waits else (True, None)
    if kind == "session.status_terminated":
        return (False, "error")
    if kind == "session.error":
        retry = ((event.get("error") or {}).get("retry_status") or {}).get("type")
        return None if retry == "retrying" else (False, "error")
    return None


Mutation = Callable[[Body], Body]
"""Receives the stored body and returns the new one; runs atomically, may raise to abort."""


@dataclass(frozen=True)
class Page:
    items: list[Body]
    next_cursor: int | None
    """Opaque position to continue from, or None on the last page."""


@dataclass(frozen=True)
class StoredEvent:
    session_id: str
    seq: int
    """Gap-free, per session, starting at 1: the stream cursor."""
    id: str
    type: str
    body: Body
    prev_hash: str = ""
    hash: str = ""
    """The tamper-evident chain (see ``chain``)."""


@dataclass(frozen=True)
class EventQuery:
    after_seq: int = 0
    before_seq: int | None = None
    limit: int | None = None
    types: Sequence[str] = ()
    order: Literal["asc", "desc"] = "asc"
    processed_after: str | None = None
    processed_after_inclusive: bool = False
    processed_before: str | None = None
    processed_before_inclusive: bool = False


@dataclass(frozen=True)
class Lease:
    """The right to run one session's harness, held by one gateway process at a time."""

    session_id: str
    owner: str
    generation: int
    """Fencing token: grows with every change of owner; appends carrying an older one fail."""
    expires_at: float
    """Seconds since the epoch (the database's clock)."""


class LeaseLost(Exception):
    """Raised by a fenced append or a renewal when another process has taken the lease."""


class StoreUnavailable(Exception):
    """The database cannot serve right now (locked, full, unreachable, restarting).

    Transient by definition: nothing was written by the failed call, or (for a commit whose
    answer was lost) the write is idempotent to check by id. Callers wait and retry; the API
    answers 503 with ``Retry-After``.
    """


class Store(Protocol):
    async def close(self) -> None: ...

    # Resources: agents, environments, sessions. ``kind`` names the collection.
    async def insert(self, kind: str, body: Body) -> None: ...

    async def insert_many(self, kind: str, bodies: Sequence[Body]) -> None:
        """Insert all of ``bodies`` in one transaction (all or none): one commit for many records."""
        ...

    async def get(self, kind: str, resource_id: str) -> Body | None: ...

    async def update(self, kind: str, resource_id: str, mutate: Mutation) -> Body | None:
        """Atomic read-modify-write; None when the resource does not exist."""
        ...

    async def delete(self, kind: str, resource_id: str) -> bool: ...

    async def list_resources(
        self,
        kind: str,
        *,
        cursor: int | None,
        limit: int,
        include_archived: bool,
        equals: dict[str, Any] | None = None,
        created_gte: str | None = None,
        created_lte: str | None = None,
        order: Literal["asc", "desc"] = "desc",
        one_of: dict[str, Sequence[Any]] | None = None,
        not_null: Sequence[str] = (),
        text: str | None = None,
    ) -> Page:
        """``equals`` maps dotted body paths (``agent.id``) to required values, ``one_of`` to
        allowed values; ``not_null`` paths must hold a value other than null; ``text`` must
        occur (case-insensitively) in the id, the ``title`` or a ``metadata`` value."""
        ...

    # Agents keep every version immutable beside the current document.
    async def insert_agent(self, body: Body) -> None: ...

    async def update_agent(self, agent_id: str, mutate: Mutation) -> Body | None:
        """Like ``update``; when the version changes the new version is recorded too."""
        ...

    async def get_agent_version(self, agent_id: str, version: int) -> Body | None: ...

    async def list_agent_versions(self, agent_id: str, *, cursor: int | None, limit: int) -> Page: ...

    # The session log.
    async def append_events(
        self, session_id: str, events: Sequence[Body], fence: Lease | None = None
    ) -> list[StoredEvent]:
        """Persist events (each with ``id`` and ``type``) atomically, assigning the next seqs.

        With ``fence``, the append fails with ``LeaseLost`` unless that lease is still the
        session's current one, so a stalled process can never write after a takeover. A status
        event in the batch also sets the session's ``status`` (see ``status_after``). String
        values never contain U+0000 (the API rejects it, the harness replaces it): PostgreSQL's
        jsonb cannot store it.
        """
        ...

    async def read_events(self, session_id: str, query: EventQuery) -> list[StoredEvent]: ...

    async def last_seq(self, session_id: str) -> int: ...

    async def event_seq(self, session_id: str, event_id: str) -> int | None: ...

    async def read_chain(self, session_id: str) -> list[ChainLink]:
        """Every event with its stored hashes, in seq order, for ``chain.verify``."""
        ...

    async def wait_for_append(self, session_id: str, after_seq: int, timeout: float) -> bool:
        """Block until the session's log holds an event past ``after_seq`` or ``timeout`` passes.

        Returns True when there is something new to read. Wake-ups happen only after commit,
        so a reader woken here always finds the events persisted. Deleting the session wakes
        its waiters too: they return False at once (its streams can say so and end).
        """
        ...

    # Single writer per session.
    async def acquire_lease(self, session_id: str, owner: str, ttl: float) -> Lease | None:
        """Take the session's lease if it is free, expired, or already ``owner``'s; else None.
        A new owner gets ``generation + 1``; the same owner keeps its generation."""
        ...

    async def renew_lease(self, lease: Lease, ttl: float) -> Lease:
        """Extend a held lease; ``LeaseLost`` if it was taken over meanwhile."""
        ...

    async def release_lease(self, lease: Lease) -> None:
        """Give the lease up (only if still held by it), so another process can start at once."""
        ...

    async def sessions_needing_harness(self, limit: int) -> list[str]:
        """Sessions whose lease is missing or expired and that have status ``running`` or
        ``rescheduling``, or a wake-up (``WAKES_HARNESS``) past what a run has answered."""
        ...

    async def mark_answered(self, lease: Lease, through_seq: int) -> None:
        """A run holding ``lease`` has looked at the log through ``through_seq``: wake-ups up to
        there are handled. A no-op when the lease has changed hands meanwhile."""
        ...

    # Health.
    async def check(self) -> None:
        """Raise ``StoreUnavailable`` unless the store can take a write right now (readiness)."""
        ...
