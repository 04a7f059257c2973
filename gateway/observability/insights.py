"""The four figures, computed from a session's log and nothing else.

1. Time to first useful output: from the first ``user.message`` to the first
   ``agent.message`` or the first successful tool result after it.
2. Human corrections: denied confirmations, interrupts, and follow-up messages (a
   ``user.message`` sent after the agent had already responded to earlier input).
3. Recovery events: model calls retried after a failure, reschedules (a gateway stopped
   or died mid-turn), and of those the restarts the session survived (ran again after).
4. Audit-trail integrity: the tamper-evident hash chain, verified event by event.

Pure functions over event bodies, so the API, the CLI and tests compute the same thing.
Costs are estimates at published list prices, labelled as such wherever they appear.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from gateway.pricing import DEFAULT_TABLE, PriceTable
from gateway.store.base import SESSION_STATUS_OF_EVENT, Body
from gateway.store.chain import Verdict

USEFUL_RESULT_TYPES = frozenset({"agent.tool_result", "agent.mcp_tool_result"})
TOOL_USE_TYPES = frozenset({"agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"})
TOOL_RESULT_TYPES = frozenset({"agent.tool_result", "agent.mcp_tool_result", "user.custom_tool_result"})
USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


COST_BASIS = (
    "Estimate only: tokens times the list prices budgets are counted at (pricing: the built-in "
    "table and TETHER_PRICES_FILE's entries are the gateway's; this uses the built-in one). Not a bill."
)


def estimate_cost(
    model: str | None, usage: dict[str, int], prices: PriceTable = DEFAULT_TABLE
) -> dict[str, Any] | None:
    """The usage at list prices (``gateway.pricing``: the gateway's table), in dollars, labelled as
    an estimate (cache writes are priced at the 5-minute rate)."""
    found = prices.entry(model) if model else None
    if found is None:
        return None
    prefix, price = found
    picos = price.cost({**usage, "cache_creation": {}})
    return {"usd": round(picos / 10**12, 6), "priced_as": prefix, "is_estimate": True, "basis": COST_BASIS}


def _time(event: Body) -> datetime | None:
    raw = event.get("processed_at")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def integrity(verdict: Verdict | None) -> dict[str, Any] | None:
    if verdict is None:
        return None
    broken = verdict.broken_at
    return {
        "ok": verdict.ok,
        "events": verdict.events,
        "head": verdict.head,
        "broken_at": (
            {"seq": broken.seq, "event_id": broken.event_id, "reason": verdict.reason} if broken else None
        ),
    }


def session_insights(
    session: Body | None,
    events: Sequence[Body],
    verdict: Verdict | None = None,
    now: datetime | None = None,
    prices: PriceTable = DEFAULT_TABLE,
) -> dict[str, Any]:
    """Everything the trail page and ``tether sessions show`` display about one session.

    ``now`` closes a running interval that has not ended yet (for ``active_seconds``).
    """
    first_user: datetime | None = None
    first_useful: Body | None = None
    responded = False  # the agent has answered something since the first user.message
    denials = interrupts = follow_ups = 0
    retries = reschedules = survived = 0
    pending_restart = False
    model_calls = failed_calls = tool_calls = tool_errors = 0
    latency_total = 0.0
    open_requests: dict[str, datetime | None] = {}
    usage = dict.fromkeys(USAGE_FIELDS, 0)
    running_since: datetime | None = None
    active = 0.0

    for event in events:
        kind = event.get("type", "")
        moment = _time(event)
        if kind == "user.message":
            if first_user is None:
                first_user = moment
            elif responded:
                follow_ups += 1
        elif kind == "user.interrupt":
            interrupts += 1
        elif kind == "user.tool_confirmation" and event.get("result") == "deny":
            denials += 1
        elif kind == "session.error":
            retry = ((event.get("error") or {}).get("retry_status") or {}).get("type")
            if retry == "retrying":
                retries += 1
        elif kind == "span.model_request_start":
            open_requests[str(event.get("id"))] = moment
        elif kind == "span.model_request_end":
            model_calls += 1
            started = open_requests.pop(str(event.get("model_request_start_id")), None)
            took = _seconds(started, moment)
            if took is not None:
                latency_total += took
            if event.get("is_error"):
                failed_calls += 1
            model_usage = event.get("model_usage") or {}
            for name in USAGE_FIELDS:
                usage[name] += int(model_usage.get(name) or 0)
        elif kind == "span.outcome_evaluation_end":  # the grader's calls, summed per evaluation
            for name in USAGE_FIELDS:
                usage[name] += int((event.get("usage") or {}).get(name) or 0)
        elif kind in TOOL_USE_TYPES:
            tool_calls += 1
        elif kind in TOOL_RESULT_TYPES and event.get("is_error"):
            tool_errors += 1

        if first_user is not None and kind != "user.message" and _is_agent_response(kind):
            responded = True
        if first_useful is None and first_user is not None and _is_useful(event):
            first_useful = event

        status = SESSION_STATUS_OF_EVENT.get(kind)
        if status == "rescheduling":
            reschedules += 1
            pending_restart = True
        elif pending_restart and (status == "running" or kind.startswith("agent.")):
            survived += 1
            pending_restart = False
        if status == "running":
            running_since = running_since or moment
        elif status is not None and running_since is not None and moment is not None:
            active += (moment - running_since).total_seconds()
            running_since = None

    if running_since is not None and now is not None:
        active += max(0.0, (now - running_since).total_seconds())
    model = ((session or {}).get("agent") or {}).get("model")
    model_id = model.get("id") if isinstance(model, dict) else model
    first_event, last_event = (_time(events[0]), _time(events[-1])) if events else (None, None)
    return {
        "session_id": (session or {}).get("id"),
        "title": (session or {}).get("title"),
        "status": (session or {}).get("status"),
        "agent": _agent_summary(session),
        "created_at": (session or {}).get("created_at"),
        "events": len(events),
        "duration_seconds": _seconds(first_event, last_event),
        "active_seconds": round(active, 3),
        "usage": usage,
        "estimated_cost": estimate_cost(model_id, usage, prices),
        "model_calls": {
            "count": model_calls,
            "failed": failed_calls,
            "mean_latency_seconds": round(latency_total / model_calls, 3) if model_calls else None,
        },
        "tool_calls": {"count": tool_calls, "errors": tool_errors},
        "time_to_first_useful_output_seconds": (
            _seconds(first_user, _time(first_useful)) if first_useful is not None else None
        ),
        "first_useful_output": (
            {"event_id": first_useful.get("id"), "type": first_useful.get("type")} if first_useful else None
        ),
        "human_corrections": {
            "total": denials + interrupts + follow_ups,
            "denials": denials,
            "interrupts": interrupts,
            "follow_up_messages": follow_ups,
        },
        "recovery": {
            "total": retries + reschedules,
            "model_retries": retries,
            "reschedules": reschedules,
            "restarts_survived": survived,
        },
        "integrity": integrity(verdict),
    }


def _is_agent_response(kind: str) -> bool:
    return kind.startswith("agent.") or kind == "session.status_idle"


def _is_useful(event: Body) -> bool:
    kind = event.get("type")
    if kind == "agent.message":
        return True
    return kind in USEFUL_RESULT_TYPES and not event.get("is_error")


def _agent_summary(session: Body | None) -> dict[str, Any] | None:
    agent = (session or {}).get("agent")
    if not isinstance(agent, dict):
        return None
    model = agent.get("model")
    return {
        "id": agent.get("id"),
        "name": agent.get("name"),
        "version": agent.get("version"),
        "model": model.get("id") if isinstance(model, dict) else model,
    }


def aggregate(per_session: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The same figures over many sessions: distributions for time, totals for counts."""
    rows = list(per_session)
    times = [
        r["time_to_first_useful_output_seconds"]
        for r in rows
        if r["time_to_first_useful_output_seconds"] is not None
    ]
    corrections = (
        {k: sum(r["human_corrections"][k] for r in rows) for k in rows[0]["human_corrections"]}
        if rows
        else {}
    )
    recovery = {k: sum(r["recovery"][k] for r in rows) for k in rows[0]["recovery"]} if rows else {}
    verified = [r for r in rows if r["integrity"] is not None]
    usage = {name: sum(r["usage"][name] for r in rows) for name in USAGE_FIELDS}
    priced = [r["estimated_cost"]["usd"] for r in rows if r["estimated_cost"] is not None]
    return {
        "sessions": len(rows),
        "time_to_first_useful_output_seconds": {
            "count": len(times),
            "p50": _quantile(times, 0.5),
            "p90": _quantile(times, 0.9),
            "mean": round(statistics.fmean(times), 3) if times else None,
        },
        "human_corrections": {
            **({"total": 0, "denials": 0, "interrupts": 0, "follow_up_messages": 0} | corrections),
            "per_session": round(corrections.get("total", 0) / len(rows), 3) if rows else None,
        },
        "recovery": {"total": 0, "model_retries": 0, "reschedules": 0, "restarts_survived": 0} | recovery,
        "integrity": {
            "verified": len(verified),
            "intact": sum(1 for r in verified if r["integrity"]["ok"]),
            "broken": [r["session_id"] for r in verified if not r["integrity"]["ok"]],
        },
        "usage": usage,
        "estimated_cost": (
            {
                "usd": round(sum(priced), 6),
                "sessions_priced": len(priced),
                "is_estimate": True,
                "basis": COST_BASIS,
            }
            if priced
            else None
        ),
    }


def _quantile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile: always a value that actually occurred."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q * len(ordered))))
    return ordered[rank - 1]
