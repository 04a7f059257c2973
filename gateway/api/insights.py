"""HTTP routes for the figures: ``/v1/tether/insights`` (recent sessions, aggregated),
``/v1/tether/sessions/{id}/insights`` (one session) and ``/metrics`` (Prometheus).

Insights are computed from the hash chain rows (``read_chain``), which carry every event
body, so one read per session yields both the figures and the integrity verdict.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway import ids
from gateway.api.pagination import bool_param, encode_cursor, limit_param, page_params
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.observability.insights import aggregate, session_insights
from gateway.observability.metrics import METRICS_PATH, metrics_endpoint
from gateway.pricing import DEFAULT_TABLE, PriceTable
from gateway.resources import sessions
from gateway.store.base import Body, Store
from gateway.store.chain import verify

DEFAULT_SESSIONS = 50
MAX_SESSIONS = 200


async def insights_for(store: Store, session: Body, prices: PriceTable = DEFAULT_TABLE) -> dict[str, Any]:
    links = await store.read_chain(session["id"])
    verdict = verify(session["id"], links)
    return session_insights(session, [link.body for link in links], verdict, now=ids.now(), prices=prices)


async def one_session(request: Request) -> JSONResponse:
    gateway = state(request)
    session = await sessions.get(gateway.store, request.path_params["session_id"])
    return JSONResponse(await insights_for(gateway.store, session, gateway.settings.prices))


async def recent_sessions(request: Request) -> JSONResponse:
    """The most recent sessions (``limit``, default 50, at most 200; ``agent_id`` filters),
    each with its figures, and the aggregate over them."""
    gateway = state(request)
    cursor, _ = page_params(request)
    limit = limit_param(request, default=DEFAULT_SESSIONS, maximum=MAX_SESSIONS)
    equals: dict[str, object] = {}
    if agent_id := request.query_params.get("agent_id"):
        equals["agent.id"] = agent_id
    page = await gateway.store.list_resources(
        sessions.KIND,
        cursor=cursor,
        limit=limit,
        include_archived=bool_param(request, "include_archived"),
        equals=equals,
    )
    rows = [await insights_for(gateway.store, session, gateway.settings.prices) for session in page.items]
    return JSONResponse(
        {
            "aggregate": aggregate(rows),
            "data": rows,
            "next_page": encode_cursor(page.next_cursor) if page.next_cursor is not None else None,
        }
    )


routes = [
    endpoint("/v1/tether/insights", get=recent_sessions),
    endpoint("/v1/tether/sessions/{session_id}/insights", get=one_session),
    endpoint(METRICS_PATH, get=metrics_endpoint),
]
