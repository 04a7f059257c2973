"""Per-agent harness settings, read from the agent's ``metadata``.

The SDK's agent has no fields for output length, extended thinking, prompt caching or the
context budget, so Tether reads them from documented ``tether.*`` metadata keys (string
values, as the SDK's metadata requires). They are checked when an agent is created or
updated, so a typo is a 400 then and never a failed session later.

| key | values | default |
|---|---|---|
| ``tether.max_tokens`` | integer 1..128000 | the gateway's ``max_output_tokens`` |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.errors import InvalidRequest

PREFIX = "tether."
MAX_TOKENS_LIMIT = 128_000


@dataclass(frozen=True)
class AgentSettings:
    """What the harness needs from one agent version; ``None`` means the gateway default."""

    max_tokens: int | None = None


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


PARSERS: dict[str, Callable[[str], object]] = {
    "tether.max_tokens": _bounded_int(1, MAX_TOKENS_LIMIT),
}
"""Each known key and how its string value is parsed (raising ``ValueError`` with the reason)."""

FIELDS: dict[str, str] = {
    "tether.max_tokens": "max_tokens",
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
    return AgentSettings(**values)  # type: ignore[arg-type]


def of(agent: Mapping[str, object]) -> AgentSettings:
    """The settings of a stored agent (already validated when it was saved)."""
    metadata = agent.get("metadata")
    return parse(metadata if isinstance(metadata, Mapping) else None)
