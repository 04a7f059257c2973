"""Budgets: a session's list cost, costed from each model call's usage at list prices, and a
hard ceiling on it, through the SDK against a real gateway and the scripted model.

Each scripted answer reports 100,000 input and 10,000 output tokens: on a Sonnet model ($3 and
$15 per million) that is 45 cents a call, so a $1.00 budget allows three calls (the third
starts at 90 cents, below the ceiling) and stops the fourth before it is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.beta.beta_managed_agents_session import BetaManagedAgentsSession

from gateway.config import Settings
from gateway.resources.pricing import PriceTable, minor_units, price
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

    # Raising the ceiling lets the next message through; lowering it to what was spent does not.
    _refused(
        lambda: client.beta.sessions.update(
            session.id, budget={"type": "limit", "max_list_cost": {"amount": "135", "currency": "USD"}}
        ),
        "budget_not_raised",
    )
    client.beta.sessions.update(
        session.id, budget={"type": "limit", "max_list_cost": {"amount": "200", "currency": "USD"}}
    )
    assert send_and_stream(client, session.id, [user_message("Q4")])[-1].stop_reason.type == "end_turn"
    assert len(scripts.requests_for(marker)) == 4


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

    prices.write_text("house-model: {input: 2}\n")
    monkeypatch.setenv("TETHER_PRICES_FILE", str(prices))
    with pytest.raises(ConfigError, match="TETHER_PRICES_FILE"):
        Settings.from_env(tmp_path)
