"""The Messages API's prompt cache, modelled so the scripted model reports usage as Claude does.

The API caches the prompt prefix (tools, then system, then messages) up to each block marked
``cache_control``. A later request whose prefix up to one of its marks matches one cached
within the TTL reads it at a tenth of the input price; the rest up to its last mark is
written to the cache (at 1.25x), and what follows the last mark is plain input. Here:

- a prefix is identified by its canonical JSON (sorted keys, compact, marks removed), so
  where a mark sits never changes what is cached, only where a prefix ends;
- tokens are characters / 4, as the scripted model's usage estimate has always been, so a
  request without marks is billed exactly as before;
- the API's refusals are kept: more than four marks, a mark on an empty text block or on a
  thinking block is a 400, so a harness that breaks these rules fails against it too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_BREAKPOINTS", "TTL_SECONDS", "Breakpoint", "PromptCache", "breakpoints", "problem"]

MARK = "cache_control"
MAX_BREAKPOINTS = 4
TTL_SECONDS = 300.0
"""The API's default ("5m") cache lifetime, refreshed by each read."""
TTLS = (None, "5m", "1h")

Position = tuple[str, int, int]
"""Where a mark sits: ``("tools", i, 0)``, ``("system", i, 0)`` or ``("messages", i, j)``."""


@dataclass(frozen=True)
class Breakpoint:
    """A marked prefix: its identity and its length in tokens."""

    key: str
    tokens: int


def problem(request: Mapping[str, Any]) -> str | None:
    """Why the API would refuse the request's ``cache_control`` marks, or ``None``."""
    marked = list(_marks(request))
    if len(marked) > MAX_BREAKPOINTS:
        return (
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(marked)}."
        )
    for where, block in marked:
        mark = block[MARK]
        if not isinstance(mark, dict) or mark.get("type") != "ephemeral" or mark.get("ttl") not in TTLS:
            return f"{where}.cache_control: must be {{'type': 'ephemeral'}} (with an optional ttl 5m or 1h)"
        kind = block.get("type")
        if kind in ("thinking", "redacted_thinking"):
            return f"{where}: cache_control cannot be set for {kind} blocks"
        if kind == "text" and not str(block.get("text") or "").strip():
            return f"{where}.text: cache_control cannot be set for empty text blocks"
    return None


def prompt_tokens(request: Mapping[str, Any]) -> int:
    """The whole prompt, in tokens (at least 1)."""
    return max(1, _chars(_parts(request, None)) // 4)


def breakpoints(request: Mapping[str, Any]) -> list[Breakpoint]:
    """The request's marked prefixes, shortest first."""
    positions = sorted({_position(where) for where, _ in _marks(request)}, key=_order)
    found = []
    for position in positions:
        parts = _parts(request, position)
        canonical = json.dumps(
            {"model": request.get("model"), **parts},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        found.append(Breakpoint(hashlib.sha256(canonical.encode()).hexdigest(), _chars(parts) // 4))
    return found


class PromptCache:
    """The prefixes one scripted model has seen, each until its TTL runs out."""

    def __init__(self, ttl: float = TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._expiry: dict[str, float] = {}

    def account(self, request: Mapping[str, Any]) -> dict[str, int]:
        """The input side of the request's usage; caches its marked prefixes as a side effect."""
        total = prompt_tokens(request)
        points = breakpoints(request)
        if not points:
            return {"input_tokens": total, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        now = self._clock()
        self._expiry = {key: until for key, until in self._expiry.items() if until > now}
        read = max((point.tokens for point in points if point.key in self._expiry), default=0)
        written = points[-1].tokens
        for point in points:
            self._expiry[point.key] = now + self._ttl
        return {
            "input_tokens": max(1, total - written),
            "cache_creation_input_tokens": written - read,
            "cache_read_input_tokens": read,
        }


def _marks(request: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each marked block with its path (``messages.3.content.0``); a mark inside a tool result
    counts at the tool result's position."""
    tools = request.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, dict) and MARK in tool:
            yield f"tools.{i}", tool
    system = request.get("system")
    for i, block in enumerate(system if isinstance(system, list) else []):
        if isinstance(block, dict) and MARK in block:
            yield f"system.{i}", block
    messages = request.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            if not isinstance(block, dict):
                continue
            if MARK in block:
                yield f"messages.{i}.content.{j}", block
            inner = block.get("content") if block.get("type") == "tool_result" else None
            for k, nested in enumerate(inner if isinstance(inner, list) else []):
                if isinstance(nested, dict) and MARK in nested:
                    yield f"messages.{i}.content.{j}.content.{k}", nested


def _position(where: str) -> Position:
    parts = where.split(".")
    if parts[0] == "messages":
        return ("messages", int(parts[1]), int(parts[3]))
    return (parts[0], int(parts[1]), 0)


def _order(position: Position) -> tuple[int, int, int]:
    return (("tools", "system", "messages").index(position[0]), position[1], position[2])


def _parts(request: Mapping[str, Any], upto: Position | None) -> dict[str, Any]:
    """Tools, system and messages, unmarked, cut after the block at ``upto`` (whole if None)."""
    tools = [_unmarked(tool) for tool in request.get("tools") or []]
    system = request.get("system") or []
    if isinstance(system, str):  # the same prompt costs the same whichever form it is sent in
        system = [{"type": "text", "text": system}]
    system = [_unmarked(block) for block in system]
    messages = [
        {**m, "content": [_unmarked(b) for b in m["content"]]} if isinstance(m.get("content"), list) else m
        for m in request.get("messages") or []
        if isinstance(m, dict)
    ]
    if upto is None:
        return {"tools": tools, "system": system, "messages": messages}
    kind, i, j = upto
    if kind == "tools":
        return {"tools": tools[: i + 1], "system": [], "messages": []}
    if kind == "system":
        return {"tools": tools, "system": system[: i + 1], "messages": []}
    cut = {**messages[i], "content": messages[i]["content"][: j + 1]}
    return {"tools": tools, "system": system, "messages": [*messages[:i], cut]}


def _chars(parts: Mapping[str, Any]) -> int:
    """Characters of each non-empty part's JSON (``json.dumps`` defaults, as the usage estimate)."""
    return sum(len(json.dumps(value)) for value in parts.values() if value)


def _unmarked(block: Any) -> Any:
    if not isinstance(block, dict):
        return block
    copy = {key: value for key, value in block.items() if key != MARK}
    if copy.get("type") == "tool_result" and isinstance(copy.get("content"), list):
        copy["content"] = [_unmarked(inner) for inner in copy["content"]]
    return copy
