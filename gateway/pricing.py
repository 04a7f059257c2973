"""List prices per model, and what a model call's usage costs at them.

Budgets (``budget.max_list_cost``) are enforced on list cost: public per-token prices, whatever
discount an account has, so a cap fires at or before the real charge. Costs are kept in whole
picodollars (a price of $0.30 per million tokens is 300,000 picodollars a token), so adding up a long
session never rounds; the API shows them in the currency's minor units (cents), rounded up.

The defaults are the public list prices Tether ships with, matched by model id prefix (the
longest wins, so ``claude-opus-4-5`` overrides ``claude-opus-4``); ``TETHER_PRICES_FILE`` adds
or replaces entries. A model with no price cannot carry a budget (``model_not_budgetable``).
Long-context premiums are not modelled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

PICOS_PER_MINOR_UNIT = 10_000_000_000
"""Picodollars in a cent."""
CURRENCY = "USD"
PRICE_KEYS = frozenset({"input", "output", "cache_read", "cache_write_5m", "cache_write_1h"})
CACHE_READ, CACHE_WRITE_5M, CACHE_WRITE_1H = Decimal("0.1"), Decimal("1.25"), Decimal("2")
"""Prompt-cache prices as multiples of the input price, where an entry does not give them."""


@dataclass(frozen=True)
class Price:
    """Picodollars per token."""

    input: int
    output: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int

    def cost(self, usage: dict[str, Any]) -> int:
        """Picodollars for one call's usage (the Messages API's ``usage`` object)."""
        created = usage.get("cache_creation") or {}
        one_hour = int(created.get("ephemeral_1h_input_tokens") or 0)
        five_minutes = int(usage.get("cache_creation_input_tokens") or 0) - one_hour
        return (
            int(usage.get("input_tokens") or 0) * self.input
            + int(usage.get("output_tokens") or 0) * self.output
            + int(usage.get("cache_read_input_tokens") or 0) * self.cache_read
            + max(five_minutes, 0) * self.cache_write_5m
            + one_hour * self.cache_write_1h
        )


def _per_token(dollars_per_million: Decimal) -> int:
    if not dollars_per_million.is_finite():
        raise ValueError(f"{dollars_per_million} is not a price")
    picos = dollars_per_million * 1_000_000
    if picos != picos.to_integral_value() or picos < 0:
        raise ValueError(f"{dollars_per_million} $/MTok is not a whole number of picodollars a token")
    return int(picos)


def price(input: str, output: str, **cache: str) -> Price:
    """A price from dollars per million tokens; cache prices default to the input's multiples."""
    base = Decimal(input)
    return Price(
        input=_per_token(base),
        output=_per_token(Decimal(output)),
        cache_read=_per_token(Decimal(cache.get("cache_read", base * CACHE_READ))),
        cache_write_5m=_per_token(Decimal(cache.get("cache_write_5m", base * CACHE_WRITE_5M))),
        cache_write_1h=_per_token(Decimal(cache.get("cache_write_1h", base * CACHE_WRITE_1H))),
    )


DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4": price("15", "75"),
    "claude-opus-4-5": price("5", "25"),
    "claude-opus-4-6": price("5", "25"),
    "claude-sonnet-4": price("3", "15"),
    "claude-3-7-sonnet": price("3", "15"),
    "claude-3-5-sonnet": price("3", "15"),
    "claude-3-opus": price("15", "75"),
    "claude-haiku-4": price("1", "5"),
    "claude-3-5-haiku": price("0.8", "4"),
    "claude-3-haiku": price("0.25", "1.25"),
}


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price]

    def entry(self, model: str) -> tuple[str, Price] | None:
        """(prefix, price) of the entry with the longest prefix of ``model``, if any."""
        matches = [prefix for prefix in self.prices if model.startswith(prefix)]
        if not matches:
            return None
        prefix = max(matches, key=len)
        return prefix, self.prices[prefix]

    def for_model(self, model: str) -> Price | None:
        found = self.entry(model)
        return found[1] if found else None

    @classmethod
    def load(cls, path: str | None) -> PriceTable:
        """The defaults, with a file's entries (``{model prefix: {input, output, [cache_read,
        cache_write_5m, cache_write_1h]}}`` in dollars per million tokens) over them."""
        prices = dict(DEFAULT_PRICES)
        if path:
            text = Path(path).read_text()
            try:
                raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError) as exc:
                raise ValueError(f"{path}: not valid JSON or YAML: {exc}") from None
            if not isinstance(raw, dict):
                raise ValueError(f"{path}: expected a mapping of model prefix to prices")
            for model, entry in raw.items():
                try:
                    unknown = set(dict(entry)) - PRICE_KEYS
                    if unknown:
                        raise ValueError(f"unknown keys {sorted(unknown)} (expected {sorted(PRICE_KEYS)})")
                    prices[str(model)] = price(**{k: str(v) for k, v in dict(entry).items()})
                except (TypeError, ValueError, InvalidOperation) as exc:
                    raise ValueError(f"{path}: {model}: {exc}") from None
        return cls(prices)


DEFAULT_TABLE = PriceTable(DEFAULT_PRICES)


def minor_units(picos: int) -> str:
    """Picodollars as whole cents, rounded up (a cap compares at or above the real cost)."""
    return str(-(-picos // PICOS_PER_MINOR_UNIT))
