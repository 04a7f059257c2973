"""Running dreams: each dream is a session the harness runs like any other.

A dream's session runs the gateway's own dreaming agent (the dream's model; its instructions
in the system prompt; never an API object) in the gateway's own environment
(``DREAM_ENVIRONMENT``: a sandbox with no network). The output store is mounted read-write, as
any attached memory store is (``gateway.tools.memory_sync``): a new store holding a copy of
the input (``create_new``) or the input itself (``update_existing``), so what the dream writes
is saved as it goes, authored by its session. The sessions it learns from are placed as text
at ``/mnt/session/transcripts/<id>.md`` (``gateway.tools.placement``). Watching the session's
events shows what the dream reads and writes, as the SDK documents.

Every step is idempotent and its result recorded on the dream (``advance``) before the next:
the output store, then the session id, then the copy, then the session. ``sweep_forever``
(each gateway process) carries on any dream a crash left half started and moves each running
dream to its final status from its session's (``completed`` when the session idles having
answered, ``failed`` when it stops otherwise), with the session's usage. The harness gives the
session itself the crash safety of every session.
"""

from __future__ import annotations

import logging

import anyio

from gateway import ids
from gateway.errors import InvalidRequest, NotFound, TetherError
from gateway.harness.runner import SessionRunner
from gateway.resources import agents, dreams, environments, memories, memory_stores
from gateway.resources import sessions as session_state
from gateway.schemas.agents import AgentCreate
from gateway.schemas.environments import EnvironmentCreate
from gateway.schemas.memory_stores import MemoryStoreCreate, session_actor
from gateway.schemas.sessions import SessionCreate
from gateway.sessionlog.events import new_event
from gateway.store.base import Body, EventQuery, Store, StoredEvent
from gateway.tools.placement import TRANSCRIPT_SOURCES, TRANSCRIPTS_AREA

log = logging.getLogger("tether.dreams")

DREAM_ENVIRONMENT = "env_tether_dreams"
DREAM_AGENT = "agent_tether_dreamer"
DREAM_FIELD = "_dream_id"
SWEEP_SECONDS = 1.0
SYSTEM = (
    "You are dreaming: you reorganise a memory store using what past sessions learned. The store "
    "is mounted read-write (see the memory section below); the transcripts of the sessions to "
    f"learn from are text files in {TRANSCRIPTS_AREA}, one per session. Read the transcripts and "
    "the store, then rewrite the store so that it holds durable, well-organised knowledge: merge "
    "duplicates, correct what the transcripts show to be wrong or outdated, add the lessons and "
    "facts worth keeping, and remove what is obsolete. Write only inside the store. When the "
    "store is in order, answer with a short summary of what you changed."
)


def dream_agent(dream: Body) -> Body:
    """The agent a dream's session runs: its model, its instructions in the system prompt."""
    system = SYSTEM
    if dream.get("instructions"):
        system += f"\n\nGuidance for this dream:\n{dream['instructions']}"
    request = AgentCreate.model_validate(
        {
            "name": "Tether dreamer",
            "model": dream["model"]["id"],
            "system": system,
            "tools": [{"type": "agent_toolset_20260401"}],
        }
    )
    body = agents.agent_body(request, DREAM_AGENT, [])
    return {name: body.get(name) for name in session_state.AGENT_SNAPSHOT_FIELDS}


def _inputs(dream: Body) -> tuple[str, list[str]]:
    store_id = next(i["memory_store_id"] for i in dream["inputs"] if i["type"] == "memory_store")
    session_ids = next(i["session_ids"] for i in dream["inputs"] if i["type"] == "sessions")
    return store_id, session_ids


def _opening(session_ids: list[str]) -> Body:
    text = f"Dream over sessions {', '.join(session_ids)} now."
    return new_event("user.message", content=[{"type": "text", "text": text}])


def dream_usage(session: Body) -> Body:
    usage = session.get("usage") or {}
    creation = usage.get("cache_creation") or {}
    return {
        "input_tokens": int(usage.get("input_tokens") or 0),
        "output_tokens": int(usage.get("output_tokens") or 0),
        "cache_read_input_tokens": int(usage.get("cache_read_input_tokens") or 0),
        "cache_creation_input_tokens": sum(int(v or 0) for v in creation.values()),
    }


class Dreamer:
    """The gateway's ``DreamRunner``."""

    def __init__(self, store: Store, runner: SessionRunner) -> None:
        self.store = store
        self.runner = runner
        self._starting: set[str] = set()

    async def start(self, dream: Body) -> None:
        if dream["id"] in self._starting:
            return
        self._starting.add(dream["id"])
        try:
            await self._start(dream)
        except (TetherError, NotFound) as exc:
            log.warning("dream %s could not start: %s", dream["id"], exc)
            await dreams.advance(
                self.store, dream["id"], status="failed", error={"type": "invalid_input", "message": str(exc)}
            )
        finally:
            self._starting.discard(dream["id"])

    async def _start(self, dream: Body) -> None:
        input_id, session_ids = _inputs(dream)
        if not dream["outputs"]:
            output_id = input_id
            if dream["output_behavior"]["type"] == "create_new":
                source = await memory_stores.get(self.store, input_id)
                created = await memory_stores.create(
                    self.store,
                    MemoryStoreCreate(
                        name=f"{source['name']} (dream)"[:255],
                        description=f"Reorganised by dream {dream['id']} from {input_id}.",
                    ),
                )
                output_id = created["id"]
            dream = await dreams.advance(
                self.store, dream["id"], outputs=[{"type": "memory_store", "memory_store_id": output_id}]
            )
        if dream["session_id"] is None:
            dream = await dreams.advance(
                self.store, dream["id"], status="running", session_id=ids.new_id(ids.SESSION)
            )
        if dream["status"] != "running":
            return  # canceled meanwhile
        output_id = dream["outputs"][0]["memory_store_id"]
        if output_id != input_id:
            await self._copy(input_id, output_id, dream["session_id"])
        session_id = dream["session_id"]
        if await self.store.get(session_state.KIND, session_id) is None:
            await self._session(dream, output_id)
        if await self.store.last_seq(session_id) == 0:  # a crash came between the two
            await session_state.append_input(self.store, session_id, [_opening(session_ids)])
        if (await dreams.get(self.store, dream["id"]))["status"] == "canceled":
            await self.cancel(dream)  # canceled while this was starting it: it never runs
            return
        self.runner.wake(session_id)

    async def _copy(self, source: str, target: str, session_id: str) -> None:
        """The input's memories into the new store in one update (those copied before a crash
        are kept: a path already there is left as it is)."""
        edits = [
            (path, content, memories.ABSENT)
            for path, content, _ in await memories.snapshot(self.store, source)
        ]
        refused = await memories.apply_many(self.store, target, edits, session_actor(session_id))
        for failure in refused.values():
            if not isinstance(failure, memories.PathConflict):
                raise failure

    async def _session(self, dream: Body, output_id: str) -> None:
        """The dream's session, without its opening message (``_start`` appends it)."""
        environment = await self._environment()
        request = SessionCreate.model_validate(
            {
                "agent": DREAM_AGENT,
                "environment_id": environment["id"],
                "title": f"Dream {dream['id']}",
                "metadata": {"tether_dream_id": dream["id"]},
                "resources": [{"type": "memory_store", "memory_store_id": output_id, "access": "read_write"}],
            }
        )
        internal = {TRANSCRIPT_SOURCES: _inputs(dream)[1], DREAM_FIELD: dream["id"]}
        await session_state.insert(
            self.store, request, dream_agent(dream), environment, dream["session_id"], internal=internal
        )

    async def _environment(self) -> Body:
        found = await self.store.get(environments.KIND, DREAM_ENVIRONMENT)
        if found is not None:
            return found
        request = EnvironmentCreate.model_validate(
            {
                "name": "Tether dreams",
                "description": "Where dreams run: a sandbox with no network.",
                "config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": []}},
            }
        )
        try:
            return await environments.create(self.store, request, DREAM_ENVIRONMENT)
        except Exception:  # another process made it first
            return await environments.get(self.store, DREAM_ENVIRONMENT)

    async def cancel(self, dream: Body) -> None:
        """Interrupt the dream's session; what it wrote stays in the output store."""
        session_id = dream.get("session_id")
        if not session_id or await self.store.get(session_state.KIND, session_id) is None:
            return
        last = await self._last_event(session_id)
        if last is not None and last.type in ("user.interrupt", "session.status_idle"):
            return  # stopped already: a repeated cancel adds nothing to the log
        try:
            await session_state.append_input(self.store, session_id, [new_event("user.interrupt")])
        except InvalidRequest:
            return
        self.runner.interrupt(session_id)
        self.runner.wake(session_id)

    # ------------------------------------------------------------------ following dreams

    async def refresh(self, dream: Body) -> Body:
        """The dream with its session's progress recorded: usage, and a final status."""
        if dream["status"] == "pending" or (dream["status"] == "running" and dream["session_id"] is None):
            await self.start(dream)
            return await dreams.get(self.store, dream["id"])
        if dream["status"] not in ("running", "canceled") or not dream.get("session_id"):
            return dream
        session = await self.store.get(session_state.KIND, dream["session_id"])
        if session is None:
            if dream["status"] == "running":
                await self.start(dream)  # the session was not made before a crash
            return await dreams.get(self.store, dream["id"])
        changes: Body = {"usage": dream_usage(session)}
        if dream["status"] == "running":
            changes |= await self._outcome(session)
        if changes == {"usage": dream["usage"]}:
            return dream
        return await dreams.advance(self.store, dream["id"], **changes)

    async def _outcome(self, session: Body) -> Body:
        """A final status from the session's, or nothing while it works."""
        if session["status"] == "terminated":
            return {
                "status": "failed",
                "error": {"type": "session_terminated", "message": "the dream's session ended"},
            }
        if session["status"] != "idle":
            return {}
        last = await self._last_event(session["id"])
        if last is None or last.type != "session.status_idle":
            return {}  # not started yet, or answering
        reason = (last.body.get("stop_reason") or {}).get("type")
        if reason == "end_turn":
            return {"status": "completed"}
        message = f"the dream's session stopped: {reason}"
        return {"status": "failed", "error": {"type": str(reason), "message": message}}

    async def _last_event(self, session_id: str) -> StoredEvent | None:
        newest = await self.store.read_events(session_id, EventQuery(order="desc", limit=1))
        return newest[0] if newest else None

    async def sweep_forever(self, interval: float = SWEEP_SECONDS) -> None:
        """Move unfinished dreams along (after a restart too); one bad dream never stops the rest."""
        while True:
            for dream in await self._unfinished():
                try:
                    await self.refresh(dream)
                except Exception:
                    log.exception("dream %s could not be followed", dream["id"])
            await anyio.sleep(interval)

    async def _unfinished(self) -> list[Body]:
        page = await self.store.list_resources(
            dreams.KIND,
            cursor=None,
            limit=1000,
            include_archived=True,
            one_of={"status": ["pending", "running"]},
        )
        return page.items
