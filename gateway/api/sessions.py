"""HTTP routes for ``/v1/sessions`` and the session event log (list, send, stream)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from gateway.api import access
from gateway.api.bodies import parse
from gateway.api.pagination import (
    bool_param,
    decode_cursor,
    encode_cursor,
    int_param,
    limit_param,
    page_body,
    page_params,
    time_param,
)
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest
from gateway.harness.previews import Subscription, parse_kinds
from gateway.resources import sessions, uploads
from gateway.schemas.sessions import SendEvents, SessionCreate, SessionUpdate, file_references
from gateway.sessionlog.events import new_event
from gateway.store.base import ATTENTION_FIELD, Body, EventQuery, Store, StoredEvent
from gateway.store.patient import patient

STREAM_BATCH = 500
KEEPALIVE_SECONDS = 15.0


async def create(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, SessionCreate, gateway.settings.max_body_bytes)
    access.require_vault_use(request, body.vault_ids)
    access.require_agent(request, body.agent if isinstance(body.agent, str) else body.agent.id)
    await uploads.require_usable(gateway.store, file_references(body.initial_events))
    session, initial = await sessions.create(
        gateway.store, body, prices=gateway.settings.prices, sealer=gateway.keyring
    )
    if initial:
        gateway.runner.wake(session["id"])
    return JSONResponse(sessions.render(session))


async def list_sessions(request: Request) -> JSONResponse:
    """The SDK's filters plus Tether's (``status``, repeatable; ``environment_id``;
    ``needs_attention=true``, sessions whose ``tether_attention`` is set, ``false`` filters
    nothing; ``q``, a search): each narrows the same cursor-ordered query, so ``next_page``
    stays exact under any of them."""
    cursor, limit = page_params(request)
    query = request.query_params
    equals: dict[str, object] = {}
    if (agent_id := _id_param(request, "agent_id")) is not None:
        equals["agent.id"] = agent_id
    if (version := int_param(request, "agent_version")) is not None:
        equals["agent.version"] = version
    if (environment_id := _id_param(request, "environment_id")) is not None:
        equals["environment_id"] = environment_id
    statuses = [v for name in STATUS_PARAMS for v in query.getlist(name)]
    if bad := sorted({s for s in statuses if s not in sessions.STATUSES}):
        raise InvalidRequest(f"status: {bad[0]!r} is not one of {', '.join(sessions.STATUSES)}")
    text = query.get("q")
    if text is not None and (len(text) > MAX_SEARCH or "\x00" in text):
        raise InvalidRequest(f"q: must be at most {MAX_SEARCH} characters, without NUL")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order: must be 'asc' or 'desc'")
    page = await state(request).store.list_resources(
        sessions.KIND,
        cursor=cursor,
        limit=limit,
        include_archived=bool_param(request, "include_archived"),
        equals=equals,
        created_gte=time_param(request, "created_at[gte]") or time_param(request, "created_at[gt]"),
        created_lte=time_param(request, "created_at[lte]") or time_param(request, "created_at[lt]"),
        order="asc" if order == "asc" else "desc",
        one_of={"status": sorted(set(statuses))} if statuses else None,
        not_null=[ATTENTION_FIELD] if bool_param(request, "needs_attention") else (),
        text=text or None,
    )
    return JSONResponse({**page_body(page, sessions.render), "prev_page": None})


STATUS_PARAMS = ("status", "status[]", "statuses", "statuses[]")
"""``statuses[]`` is how the SDK sends its own ``statuses``; ``status`` is Tether's name."""
MAX_SEARCH = 200
_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$", re.ASCII)


def _id_param(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not _ID.match(raw):
        raise InvalidRequest(f"{name}: not an id (letters, digits, '_' and '-', at most 128)")
    return raw


async def retrieve(request: Request) -> JSONResponse:
    return JSONResponse(
        sessions.render(await sessions.get(state(request).store, request.path_params["session_id"]))
    )


async def update(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, SessionUpdate, gateway.settings.max_body_bytes)
    access.require_vault_use(request, body.vault_ids)
    session_id = request.path_params["session_id"]
    updated = await sessions.update(gateway.store, session_id, body, gateway.settings.prices)
    if "budget" in body.model_fields_set:
        gateway.runner.wake(session_id)  # "raise the budget to continue": a stopped turn resumes
    return JSONResponse(sessions.render(updated))


async def archive(request: Request) -> JSONResponse:
    gateway = state(request)
    session_id = request.path_params["session_id"]
    body = await sessions.archive(gateway.store, session_id)
    gateway.runner.interrupt(session_id)
    await gateway.sandboxes.stop(session_id)
    return JSONResponse(sessions.render(body))


async def delete(request: Request) -> JSONResponse:
    gateway = state(request)
    session_id = request.path_params["session_id"]
    await sessions.get(gateway.store, session_id)
    gateway.runner.interrupt(session_id)
    await gateway.sandboxes.destroy(session_id)
    await sessions.delete(gateway.store, session_id)
    return JSONResponse({"id": session_id, "type": "session_deleted"})


async def send_events(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, SendEvents, gateway.settings.max_body_bytes)
    access.require_event_types(request, (event.type for event in body.events))
    session = await sessions.get(gateway.store, request.path_params["session_id"])
    await uploads.require_usable(gateway.store, file_references(body.events))
    stored = await sessions.accept_events(gateway.store, session, body.events)
    if any(event.type == "user.interrupt" for event in stored):
        gateway.runner.interrupt(session["id"])
    gateway.runner.wake(session["id"])
    return JSONResponse({"data": [event.body for event in stored]})


async def list_events(request: Request) -> JSONResponse:
    gateway = state(request)
    session = await sessions.get(gateway.store, request.path_params["session_id"])
    limit = limit_param(request, default=100, maximum=1000)
    order = request.query_params.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order: must be 'asc' or 'desc'")
    token = request.query_params.get("page")
    cursor = decode_cursor(token) if token else None
    types = request.query_params.getlist("types[]") + request.query_params.getlist("types")
    gt, gte = time_param(request, "created_at[gt]"), time_param(request, "created_at[gte]")
    lt, lte = time_param(request, "created_at[lt]"), time_param(request, "created_at[lte]")
    query = EventQuery(
        after_seq=cursor if cursor is not None and order == "asc" else 0,
        before_seq=cursor if cursor is not None and order == "desc" else None,
        limit=limit + 1,
        types=types,
        order="asc" if order == "asc" else "desc",
        processed_after=gte or gt,
        processed_after_inclusive=gte is not None,
        processed_before=lte or lt,
        processed_before_inclusive=lte is not None,
    )
    events = await gateway.store.read_events(session["id"], query)
    more = len(events) > limit
    events = events[:limit]
    return JSONResponse(
        {
            "data": [event.body for event in events],
            "next_page": encode_cursor(events[-1].seq) if more else None,
        }
    )


async def stream_events(request: Request) -> StreamingResponse:
    """Server-Sent Events from the log. ``Last-Event-ID`` replays everything after that event;
    without it the stream starts at the current end of the log, like the hosted API.
    ``event_deltas`` adds previews of events still being produced (``harness.previews``)."""
    gateway = state(request)
    query = request.query_params
    try:
        kinds = parse_kinds(query.getlist("event_deltas[]") + query.getlist("event_deltas"))
    except ValueError as exc:
        raise InvalidRequest(f"event_deltas: {exc}") from None
    session = await sessions.get(gateway.store, request.path_params["session_id"])
    session_id = session["id"]
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        cursor = await gateway.store.event_seq(session_id, last_event_id)
        if cursor is None:
            raise InvalidRequest(f"Last-Event-ID: {last_event_id!r} is not an event of session {session_id}")
    else:
        cursor = await gateway.store.last_seq(session_id)
    return StreamingResponse(
        _sse(request, session_id, cursor, kinds),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


async def _sse(request: Request, session_id: str, cursor: int, kinds: frozenset[str]) -> AsyncIterator[str]:
    # A stream outlives a database outage: it waits for the store instead of breaking off.
    gateway = state(request)
    store = patient(gateway.store)
    with gateway.previews.subscribe(session_id, kinds) as previews:
        while True:
            batch = await store.read_events(session_id, EventQuery(after_seq=cursor, limit=STREAM_BATCH))
            for event in batch:
                for preview in previews.due(event.seq):
                    yield _preview_frame(preview)
                yield _frame(event)
                cursor = event.seq
            for preview in previews.due(cursor + 1):
                yield _preview_frame(preview)
            if len(batch) == STREAM_BATCH:
                continue
            if not await _wait(store, session_id, cursor, previews if kinds else None):
                if await store.get(sessions.KIND, session_id) is None:
                    yield _deleted_frame()
                    return
                yield "event: ping\ndata: {}\n\n"


async def _wait(store: Store, session_id: str, cursor: int, previews: Subscription | None) -> bool:
    """True when the log or the previews may have news; False after the keepalive interval, or
    at once when the session is deleted."""
    if previews is None:
        return await store.wait_for_append(session_id, cursor, KEEPALIVE_SECONDS)
    news = False
    async with anyio.create_task_group() as waiting:

        async def log_news() -> None:
            nonlocal news
            news = await store.wait_for_append(session_id, cursor, KEEPALIVE_SECONDS)
            waiting.cancel_scope.cancel()

        async def preview_news() -> None:
            nonlocal news
            await previews.published()
            news = True
            waiting.cancel_scope.cancel()

        waiting.start_soon(log_news)
        waiting.start_soon(preview_news)
    return news


def _frame(event: StoredEvent) -> str:
    return f"event: {event.type}\nid: {event.id}\ndata: {json.dumps(event.body)}\n\n"


def _preview_frame(body: Body) -> str:
    """No ``id:`` line: a preview is no position in the log a reconnect could resume from.
    Tether's own kinds (``tether.*``, no SDK type) have no ``event:`` line either: the SDK's
    stream reader skips such frames, so asking for them never breaks its parsing."""
    if body["type"].startswith("tether."):
        return f"data: {json.dumps(body)}\n\n"
    return f"event: {body['type']}\ndata: {json.dumps(body)}\n\n"


def _deleted_frame() -> str:
    """The log went with the session, so ``session.deleted`` is made up here, never stored."""
    body = new_event("session.deleted")
    return f"event: session.deleted\ndata: {json.dumps(body)}\n\n"


routes = [
    endpoint("/v1/sessions", post=create, get=list_sessions),
    endpoint("/v1/sessions/{session_id}", get=retrieve, post=update, delete=delete),
    endpoint("/v1/sessions/{session_id}/archive", post=archive),
    endpoint("/v1/sessions/{session_id}/events", post=send_events, get=list_events),
    endpoint("/v1/sessions/{session_id}/events/stream", get=stream_events),
]
