"""Session budgets: a hard ceiling on a session's tracked list cost.

A session's cost is kept in ``_cost_picos`` (see ``pricing``) and shown as
``usage.list_cost``; its ``budget`` is checked before every model request, and a session at or
over its ceiling stops with ``budget_reached`` instead of calling the model. Usage of a model
with no list price cannot be measured, so it stops a budgeted session too. The update rules are
the SDK's: a budget can be replaced by a higher one or removed, never added to a session created
without one nor re-added once removed.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest
from gateway.pricing import CURRENCY, PriceTable, minor_units
from gateway.store.base import Body

COST_FIELD = "_cost_picos"
UNPRICED_FIELD = "_unpriced"
"""Set once usage of a model without a list price was recorded: the cost is unknown since."""
REMOVED_FIELD = "_budget_removed"


def model_of(session: Body) -> str:
    return str(session["agent"]["model"]["id"])


def require_budgetable(prices: PriceTable, model: str) -> None:
    if prices.for_model(model) is None:
        raise InvalidRequest(
            f"budget: model {model!r} has no list price, so a budget cannot measure it "
            "(model_not_budgetable; add it with TETHER_PRICES_FILE)"
        )


def opening_usage(prices: PriceTable, model: str) -> dict[str, Any]:
    """``list_cost`` starts at zero for a priced model, and is absent for one without a price."""
    if prices.for_model(model) is None:
        return {}
    return {"list_cost": {"amount": "0", "currency": CURRENCY}}


def charged(session: Body, usage: dict[str, Any], prices: PriceTable) -> Body:
    """The session with one model call's usage costed into ``usage.list_cost``."""
    price = prices.for_model(model_of(session))
    if price is None:
        return {**session, UNPRICED_FIELD: True}
    picos = int(session.get(COST_FIELD) or 0) + price.cost(usage)
    total = {**session["usage"], "list_cost": {"amount": minor_units(picos), "currency": CURRENCY}}
    return {**session, COST_FIELD: picos, "usage": total}


def spent(session: Body) -> int:
    """The cost as shown (whole cents, rounded up): what the ceiling is compared with, so a
    session never shows its ceiling reached and still calls the model."""
    return int(minor_units(int(session.get(COST_FIELD) or 0)))


def exhausted(session: Body, prices: PriceTable) -> bool:
    """Whether a budgeted session may not start another model request."""
    budget = session.get("budget")
    if budget is None:
        return False
    if session.get(UNPRICED_FIELD) or prices.for_model(model_of(session)) is None:
        return True
    return spent(session) >= int(budget["max_list_cost"]["amount"])


def replaced(session: Body, budget: Body | None, prices: PriceTable) -> Body:
    """The session with its budget replaced (``budget``) or removed (None), by the SDK's rules."""
    if session["status"] == "terminated":
        raise InvalidRequest(f"budget: session {session['id']} is terminated")
    if budget is None:
        removed = bool(session.get(REMOVED_FIELD)) or session.get("budget") is not None
        return {**session, "budget": None, REMOVED_FIELD: removed}
    if budget == session.get("budget"):
        return session  # sent again unchanged: not a lowering
    if session.get("budget") is None:
        reason = "it was removed" if session.get(REMOVED_FIELD) else "it was created without one"
        raise InvalidRequest(f"budget: cannot be added to this session, {reason} (budget_create_only)")
    require_budgetable(prices, model_of(session))
    if int(budget["max_list_cost"]["amount"]) <= spent(session):
        raise InvalidRequest(
            f"budget: max_list_cost must be above the {spent(session)} already spent (budget_not_raised)"
        )
    return {**session, "budget": budget}
