"""``/v1/sessions/{id}/threads``: a session's threads, as the SDK's ``sessions.threads`` reads them.

Every session has one primary thread, and in Tether that is all it has: agents' ``multiagent``
(subagent threads, advisors, workflows) is refused with a 400 when an agent is saved. So the
primary thread is the session seen as a thread: its id is derived from the session's, its agent
is the session's snapshot, its status and usage are the session's, and its events are the
session's events (the SDK's thread stream carries the same event types).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.api import sessions as session_routes
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.errors import InvalidRequest, NotFound
from gateway.resources import sessions
from gateway.store.base import Body

PREFIX = "sthr_"
THREAD_AGENT_FIELDS = tuple(f for f in sessions.AGENT_SNAPSHOT_FIELDS if f not in ("multiagent", "metadata"))
"""``BetaManagedAgentsSessionThreadAgent``: the session's snapshot without the roster
(``multiagent``) and Tether's settings (``metadata``)."""


def primary_thread_id(session_id: str) -> str:
    return PREFIX + session_id.split("_", 1)[1]


def render(session: Body) -> Body:
    agent = {name: session["agent"].get(name) for name in THREAD_AGENT_FIELDS}
    agent["type"] = "agent"
    agent["skills"] = agent["skills"] or []
    agent["execution_identity"] = agent["execution_identity"] or {"type": "service_account"}
    return {
        "type": "session_thread",
        "id": primary_thread_id(session["id"]),
        "session_id": session["id"],
        "agent": agent,
        "parent_thread_id": None,
        "status": session["status"],
        "usage": session.get("usage"),
        "stats": {"duration_seconds": sessions.render(session)["stats"]["duration_seconds"]},
        "workflow_run_id": None,
        "created_at": session["created_at"],
        "updated_at": session["updated_at"],
        "archived_at": session.get("archived_at"),
    }


async def _thread(request: Request) -> Body:
    """The session, once the path names its primary thread (any other thread is not found)."""
    session = await sessions.get(state(request).store, request.path_params["session_id"])
    thread_id = request.path_params["thread_id"]
    if thread_id != primary_thread_id(session["id"]):
        raise NotFound("session thread", thread_id)
    return session


async def list_threads(request: Request) -> JSONResponse:
    """``statuses`` (repeatable) filters; one thread is always a single page."""
    session = await sessions.get(state(request).store, request.path_params["session_id"])
    wanted = request.query_params.getlist("statuses[]") + request.query_params.getlist("statuses")
    unknown = set(wanted) - set(sessions.STATUSES)
    if unknown:
        raise InvalidRequest(f"statuses: {sorted(unknown)} not among {', '.join(sessions.STATUSES)}")
    threads = [render(session)] if not wanted or session["status"] in wanted else []
    return JSONResponse({"data": threads, "next_page": None})


async def retrieve_thread(request: Request) -> JSONResponse:
    return JSONResponse(render(await _thread(request)))


async def archive_thread(request: Request) -> Any:
    await _thread(request)
    raise InvalidRequest("the primary thread is archived with its session (sessions.archive)")


async def list_thread_events(request: Request) -> JSONResponse:
    await _thread(request)
    return await session_routes.list_events(request)


async def stream_thread_events(request: Request) -> Response:
    await _thread(request)
    return await session_routes.stream_events(request)


routes = [
    endpoint("/v1/sessions/{session_id}/threads", get=list_threads),
    endpoint("/v1/sessions/{session_id}/threads/{thread_id}", get=retrieve_thread),
    endpoint("/v1/sessions/{session_id}/threads/{thread_id}/archive", post=archive_thread),
    endpoint("/v1/sessions/{session_id}/threads/{thread_id}/events", get=list_thread_events),
    endpoint("/v1/sessions/{session_id}/threads/{thread_id}/stream", get=stream_thread_events),
]
