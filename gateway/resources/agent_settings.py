"""Per-agent harness settings, read from the agent's ``metadata``.

The SDK's agent has no fields for output length, extended thinking, prompt caching or the
context budget, so Tether reads them from documented ``tether.*`` metadata keys (string
values, as the SDK's metadata requires). They are checked when an agent is created or
updated, so a typo is a 400 then and never a failed session later.

| key | values | default |
|---|---|---|
| ``tether.max_tokens`` | integer 1..128000 | the gateway's ``max_output_tokens`` |
| ``tether.thinking`` | ``off``, ``adaptive`` or ``enabled`` (extended thinking) | ``off`` |
| ``tether.thinking_budget_tokens`` | integer from 1024, below ``tether.max_tokens`` | none |
| ``tether.prompt_caching`` | ``on`` or ``off`` (cache breakpoints) | the gateway's ``prompt_caching`` (on) |
| ``tether.context_window_tokens`` | integer 1000..2000000 (the context budget) | the model's window (200000) |
| ``tether.compaction`` | ``on`` or ``off`` (clear old tool results, summarise near the budget) | ``on`` |

``adaptive`` lets the model decide how much to think; ``enabled`` needs a budget, and only it
takes one. The API checks a budget against ``max_tokens`` only when a request is made, so
``enabled`` also needs ``tether.max_tokens`` here and a bad pair fails on save, never in a
running session. The agent's ``model.effort`` (an SDK field) is sent as ``output_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.errors import InvalidRequest

PREFIX = "tether."
MAX_TOKENS_LIMIT = 128_000
MIN_THINKING_BUDGET = 1024
THINKING_MODES = ("off", "adaptive", "enabled")


@dataclass(frozen=True)
class AgentSettings:
    """What the harness needs from one agent version; ``None`` means the gateway default."""

    max_tokens: int | None = None
    thinking: str = "off"
    thinking_budget_tokens: int | None = None
    prompt_caching: bool | None = None
    context_window_tokens: int | None = None
    compaction: bool | None = None


def _bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"must be an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value

    return parse


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.strip() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return raw.strip()

    return parse


def _on_off(raw: str) -> bool:
    return _one_of(("on", "off"))(raw) == "on"


PARSERS: dict[str, Callable[[str], object]] = {
    "tether.max_tokens": _bounded_int(1, MAX_TOKENS_LIMIT),
    "tether.thinking": _one_of(THINKING_MODES),
    "tether.thinking_budget_tokens": _bounded_int(MIN_THINKING_BUDGET, MAX_TOKENS_LIMIT - 1),
    "tether.prompt_caching": _on_off,
    "tether.context_window_tokens": _bounded_int(1000, 2_000_000),
    "tether.compaction": _on_off,
}
"""Each known key and how its string value is parsed (raising ``ValueError`` with the reason)."""

FIELDS: dict[str, str] = {
    "tether.max_tokens": "max_tokens",
    "tether.thinking": "thinking",
    "tether.thinking_budget_tokens": "thinking_budget_tokens",
    "tether.prompt_caching": "prompt_caching",
    "tether.context_window_tokens": "context_window_tokens",
    "tether.compaction": "compaction",
}
"""The ``AgentSettings`` field each key fills."""


def parse(metadata: Mapping[str, str] | None) -> AgentSettings:
    """The settings in ``metadata``; an unknown ``tether.*`` key or a bad value is a 400."""
    values: dict[str, object] = {}
    for key, raw in (metadata or {}).items():
        if not key.startswith(PREFIX):
            continue
        parser = PARSERS.get(key)
        if parser is None:
            known = ", ".join(sorted(PARSERS))
            raise InvalidRequest(f"metadata.{key}: unknown Tether setting (known: {known})")
        try:
            values[FIELDS[key]] = parser(raw)
        except ValueError as exc:
            raise InvalidRequest(f"metadata.{key}: {exc}") from None
    settings = AgentSettings(**values)  # type: ignore[arg-type]
    _check_thinking(settings)
    return settings


def _check_thinking(settings: AgentSettings) -> None:
    """The budget goes with ``enabled`` only, and must leave room for the answer in ``max_tokens``."""
    budget = settings.thinking_budget_tokens
    if settings.thinking != "enabled":
        if budget is not None:
            raise InvalidRequest("metadata.tether.thinking_budget_tokens: only with tether.thinking=enabled")
        return
    if budget is None:
        raise InvalidRequest("metadata.tether.thinking=enabled needs tether.thinking_budget_tokens")
    if settings.max_tokens is None:
        raise InvalidRequest("metadata.tether.thinking=enabled needs tether.max_tokens (above the budget)")
    if budget >= settings.max_tokens:
        raise InvalidRequest(
            f"metadata.tether.thinking_budget_tokens: {budget} must be less than "
            f"tether.max_tokens ({settings.max_tokens})"
        )


def of(agent: Mapping[str, object]) -> AgentSettings:
    """The settings of a stored agent (already validated when it was saved)."""
    metadata = agent.get("metadata")
    return parse(metadata if isinstance(metadata, Mapping) else None)
