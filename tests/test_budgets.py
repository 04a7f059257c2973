"""Budgets: a session's list cost, costed from each model call's usage at list prices, and a
hard ceiling on it, through the SDK against a real gateway and the scripted model.

Each scripted answer reports 100,000 input and 10,000 output tokens: on a Sonnet model ($3 and
$15 per million) that is 45 cents a call, so a $1.00 budget allows three calls (the third
starts at 90 cents, below the ceiling) and stops the fourth before it is made.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.beta.beta_managed_agents_session import BetaManagedAgentsSession

from gateway.config import Settings
from gateway.errors import InvalidRequest
from gateway.pricing import PriceTable, minor_units, price
from gateway.resources import budgets
from gateway.settings import ConfigError
from tests.conftest import Scripts
from tests.support.sessions import send_and_stream, strictly_valid, user_message
from tests.test_deployments import deploy

SONNET = "claude-sonnet-4-6"
CALL = {
    "input_tokens": 100_000,
    "output_tokens": 10_000,
    "cache_read_input_tokens": 0,
    "cache_creation_input_tokens": 0,
}
DOLLAR: Any = {"type": "limit", "max_list_cost": {"amount": "100", "currency": "USD"}}


def _answers(scripts: Scripts, count: int) -> str:
    return scripts.add(
        [{"content": [{"type": "text", "text": f"A{n}"}], "usage": CALL} for n in range(count)]
    )


def _session(client: anthropic.Anthropic, environment: Any, marker: str, **params: Any) -> Any:
    agent = client.beta.agents.create(name="budgeted", model=SONNET, system=marker)
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id, **params)


def _strict_session(client: anthropic.Anthropic, session_id: str) -> BetaManagedAgentsSession:
    raw = client.beta.sessions.with_raw_response.retrieve(session_id).http_response.text
    return BetaManagedAgentsSession.model_validate_json(raw, strict=True)


def _refused(call: Any, reason: str) -> None:
    with pytest.raises(anthropic.BadRequestError, match=reason):
        call()


def test_a_budget_stops_the_session_before_the_call_that_would_start_above_it(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = _answers(scripts, 5)
    session = _session(client, environment, marker, budget=DOLLAR)
    assert _strict_session(client, session.id).usage.list_cost.amount == "0"  # type: ignore[union-attr]

    stops = []
    for n in range(4):
        streamed = send_and_stream(client, session.id, [user_message(f"Q{n}")])
        stops.append(streamed[-1].stop_reason.type)
    assert stops == ["end_turn", "end_turn", "end_turn", "budget_reached"]
    assert len(scripts.requests_for(marker)) == 3  # the fourth call was never made

    spent = _strict_session(client, session.id)
    assert spent.usage.list_cost is not None and spent.usage.list_cost.amount == "135"
    assert spent.usage.input_tokens == 300_000 and spent.budget is not None
    raw = client.beta.sessions.events.with_raw_response.list(session.id, limit=100).http_response.json()
    strictly_valid(raw["data"])

    # A message sent while the budget is spent gets its own answer: budget_reached again.
    assert send_and_stream(client, session.id, [user_message("Q4")])[-1].stop_reason.type == "budget_reached"
    # Lowering the ceiling to what was spent is refused; raising it resumes the stopped turn.
    _refused(
        lambda: client.beta.sessions.update(
            session.id, budget={"type": "limit", "max_list_cost": {"amount": "135", "currency": "USD"}}
        ),
        "budget_not_raised",
    )
    with client.beta.sessions.events.stream(session.id) as stream:
        client.beta.sessions.update(
            session.id, budget={"type": "limit", "max_list_cost": {"amount": "200", "currency": "USD"}}
        )
        resumed = [event.type for event in _until_idle(stream)]
    assert "agent.message" in resumed and len(scripts.requests_for(marker)) == 4


def _until_idle(stream: Any) -> list[Any]:
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "session.status_idle":
            return seen
    return seen


def test_a_failed_attempt_the_model_billed_is_charged(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """A complete reply whose tool input is not valid JSON is refused and retried, but it was
    generated: its usage counts towards the budget."""
    marker = scripts.add(
        [
            {
                "content": [{"type": "tool_use", "name": "lookup", "input": {"q": "x"}}],
                "usage": CALL,
                "malformed_tool_json_first": 2,
            },
            {"content": [{"type": "text", "text": "done"}], "usage": CALL},
        ]
    )
    lookup: Any = {
        "type": "custom",
        "name": "lookup",
        "description": "Look up.",
        "input_schema": {"type": "object"},
    }
    agent = client.beta.agents.create(name="billed", model=SONNET, system=marker, tools=[lookup])
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, budget=DOLLAR)
    streamed = send_and_stream(client, session.id, [user_message("go")])
    assert streamed[-1].stop_reason.type == "requires_action"  # the third attempt parsed
    ends = [
        e
        for e in client.beta.sessions.events.list(session.id, limit=100).data
        if e.type == "span.model_request_end"
    ]
    assert [(e.is_error, e.model_usage.input_tokens) for e in ends] == [
        (True, 100_000),
        (True, 100_000),
        (False, 100_000),
    ]
    # The refused attempts broke off mid-stream (the SDK rejects the tool JSON as it arrives):
    # what they reported by then (the input side) is charged, the same as in their span ends.
    billed = {
        "input_tokens": sum(e.model_usage.input_tokens for e in ends),
        "output_tokens": sum(e.model_usage.output_tokens for e in ends),
    }
    spent = _strict_session(client, session.id).usage
    assert spent.input_tokens == 300_000 and spent.list_cost is not None
    assert spent.list_cost.amount == minor_units(price("3", "15").cost(billed))


def test_budget_updates_follow_the_sdks_rules(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = _answers(scripts, 1)
    unbudgeted = _session(client, environment, marker)
    _refused(lambda: client.beta.sessions.update(unbudgeted.id, budget=DOLLAR), "budget_create_only")

    budgeted = _session(client, environment, marker, budget=DOLLAR)
    raised: Any = {"type": "limit", "max_list_cost": {"amount": "500", "currency": "USD"}}
    assert client.beta.sessions.update(budgeted.id, budget=raised).budget.max_list_cost.amount == "500"  # type: ignore[union-attr]
    assert client.beta.sessions.update(budgeted.id, budget=None).budget is None
    _refused(lambda: client.beta.sessions.update(budgeted.id, budget=DOLLAR), "budget_create_only")
    updates = [e for e in client.beta.sessions.events.list(budgeted.id).data if e.type == "session.updated"]
    assert [u.budget.max_list_cost.amount if u.budget else None for u in updates] == ["500", None]  # type: ignore[union-attr]

    # Changing a budget wakes only a turn the budget stopped: an untouched session gets no stray
    # idle event, which a client streaming its first turn would take for that turn's end.
    fresh = _session(client, environment, marker, budget=DOLLAR)
    client.beta.sessions.update(fresh.id, budget=raised)
    streamed = send_and_stream(client, fresh.id, [user_message("first")])
    assert [e.type for e in streamed][:2] == ["user.message", "session.status_running"]
    kinds = [e.type for e in client.beta.sessions.events.list(fresh.id).data]
    assert kinds[: kinds.index("user.message")] == ["session.updated"], kinds


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ({"type": "limit", "max_list_cost": {"amount": "0100", "currency": "USD"}}, "amount"),
        ({"type": "limit", "max_list_cost": {"amount": "1.5", "currency": "USD"}}, "amount"),
        ({"type": "limit", "max_list_cost": {"amount": "100", "currency": "EUR"}}, "currency"),
        ({"type": "cap", "max_list_cost": {"amount": "100", "currency": "USD"}}, "type"),
    ],
)
def test_a_malformed_budget_is_refused(
    client: anthropic.Anthropic, environment: Any, budget: dict[str, Any], says: str
) -> None:
    agent = client.beta.agents.create(name="malformed-budget", model=SONNET)
    _refused(
        lambda: client.beta.sessions.create(agent=agent.id, environment_id=environment.id, budget=budget),  # type: ignore[arg-type]
        says,
    )


def test_a_model_without_a_list_price_cannot_carry_a_budget(
    client: anthropic.Anthropic, environment: Any
) -> None:
    agent = client.beta.agents.create(name="unpriced", model="house-model-7")
    _refused(
        lambda: client.beta.sessions.create(agent=agent.id, environment_id=environment.id, budget=DOLLAR),  # type: ignore[arg-type]
        "model_not_budgetable",
    )
    _refused(
        lambda: deploy(client, agent.id, environment.id, budget=DOLLAR),
        "model_not_budgetable",
    )
    # Nor can a budgeted deployment switch to it: every fire would fail.
    priced = client.beta.agents.create(name="priced", model=SONNET)
    budgeted = deploy(client, priced.id, environment.id, budget=DOLLAR)
    _refused(lambda: client.beta.deployments.update(budgeted.id, agent=agent.id), "model_not_budgetable")
    unbudgeted = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    assert unbudgeted.usage.list_cost is None  # no price: no cost to show


def test_a_deployment_stamps_its_budget_on_every_session_it_fires(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = _answers(scripts, 1)
    agent = client.beta.agents.create(name="deployed-budget", model=SONNET, system=marker)
    deployment = deploy(client, agent.id, environment.id, budget=DOLLAR)
    assert deployment.budget is not None and deployment.budget.max_list_cost.amount == "100"
    run = client.beta.deployments.run(deployment.id)
    assert run.session_id is not None
    session = _strict_session(client, run.session_id)
    assert session.budget is not None and session.budget.max_list_cost.amount == "100"
    assert client.beta.deployments.update(deployment.id, budget=None).budget is None


def test_costs_are_exact_and_round_up_to_the_cent() -> None:
    sonnet = price("3", "15")
    usage = {
        "input_tokens": 1000,
        "output_tokens": 100,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 400,
        "cache_creation": {"ephemeral_1h_input_tokens": 100},
    }
    # 1000*3 + 100*15 + 2000*0.3 + 300*3.75 + 100*6 = 6,825 millionths of a dollar.
    assert sonnet.cost(usage) == 6_825 * 10**6
    assert minor_units(sonnet.cost(usage)) == "1" and minor_units(0) == "0"
    assert minor_units(10**10) == "1" and minor_units(10**10 + 1) == "2"
    assert price("0.25", "1.25").cache_write_5m == 312_500  # $0.3125 per million: exact


def test_a_prices_file_adds_and_overrides_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text(
        "house-model: {input: 2, output: 8}\nclaude-sonnet-4: {input: 1, output: 2, cache_read: 0.5}\n"
    )
    table = PriceTable.load(str(prices))
    assert table.for_model("house-model-7") == price("2", "8")
    assert table.for_model("claude-sonnet-4-6") == price("1", "2", cache_read="0.5")
    assert table.for_model("claude-opus-4-1") == price("15", "75")  # defaults stay

    monkeypatch.setenv("TETHER_PRICES_FILE", str(prices))
    for wrong in (
        "house-model: {input: 2}",
        "m: {input: 1, output: 2, cache_reads: 0.1}",
        "m: {input: .inf, output: 1}",
    ):
        prices.write_text(wrong + "\n")
        with pytest.raises(ConfigError, match="TETHER_PRICES_FILE"):
            Settings.from_env(tmp_path)


def test_the_ceiling_is_compared_with_the_cost_as_shown() -> None:
    """Shown costs round up to the cent; the ceiling compares with that, in both directions."""
    table = PriceTable.load(None)
    session: dict[str, Any] = {
        "id": "sesn_x",
        "status": "idle",
        "agent": {"model": {"id": SONNET}},
        "usage": {},
        "budget": {"type": "limit", "max_list_cost": {"amount": "2", "currency": "USD"}},
        "_cost_picos": 108 * 10**8,  # 1.08 cents, shown as "2"
    }
    assert budgets.exhausted(session, table)
    lower_to_shown = {"type": "limit", "max_list_cost": {"amount": "2", "currency": "USD"}}
    assert budgets.replaced(session, lower_to_shown, table) == session  # unchanged: accepted
    with pytest.raises(InvalidRequest, match="budget_not_raised"):
        budgets.replaced(
            {**session, "budget": {**lower_to_shown, "max_list_cost": {"amount": "3", "currency": "USD"}}},
            lower_to_shown,
            table,
        )
    removed = budgets.replaced(budgets.replaced(session, None, table), None, table)
    with pytest.raises(InvalidRequest, match="it was removed"):
        budgets.replaced(removed, lower_to_shown, table)


def test_a_summarising_call_that_spends_the_rest_stops_the_request_after_it(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """The budget is checked again after a compaction: its summary call costs money too."""
    marker = "script-" + secrets.token_hex(8)
    turns = [
        {"content": [{"type": "text", "text": "A1"}], "usage": {"input_tokens": 3500, "output_tokens": 1}},
        {"content": [{"type": "text", "text": "A2"}], "usage": {"input_tokens": 500, "output_tokens": 1}},
    ]
    summary = {
        "content": [{"type": "text", "text": "SUMMARY"}],
        "usage": {"input_tokens": 3500, "output_tokens": 1000},
    }
    added = httpx2.post(
        f"{scripts.model_url}/_scripts",
        json={"match": marker, "turns": turns, "compaction": summary},
        timeout=30,
    )
    assert added.status_code == 201, added.text
    agent = client.beta.agents.create(
        name="compacting",
        model=SONNET,
        system=marker,
        metadata={"tether.context_window_tokens": "4000", "tether.max_tokens": "256"},
    )
    three_cents: Any = {"type": "limit", "max_list_cost": {"amount": "3", "currency": "USD"}}
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, budget=three_cents)
    assert (
        send_and_stream(client, session.id, [user_message("Q1 " + "x" * 200)])[-1].stop_reason.type
        == "end_turn"
    )

    stopped = send_and_stream(client, session.id, [user_message("Q2")])

    assert stopped[-1].stop_reason.type == "budget_reached"
    kinds = [e.type for e in stopped]
    assert "agent.thread_context_compacted" in kinds and "agent.message" not in kinds
    assert len(scripts.requests_for(marker)) == 2  # Q1 and the summary; Q2's request never went
