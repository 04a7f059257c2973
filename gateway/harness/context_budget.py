"""How big the next model request is, and the cheap first step when it nears the budget.

The budget is the agent's context window (``tether.context_window_tokens``, by default the
model's), less the request's ``max_tokens``: the reply has to fit in the window too.

Size is measured, not guessed: the newest successful ``span.model_request_end`` of an ordinary
request reports what that request held (input + cache read + cache write tokens), and its
``span.model_request_start`` records how many characters the request had
(``REQUEST_CHARS_FIELD``). The next request is that measurement plus the *difference* in
characters / 4. Pricing only the difference leaves the system prompt, the tools and the
tokenizer's quirks to the model's own count; chars/4 prices what changed since (new turns,
cleared results, a summary in place of turns). A session's first request has no measurement
and is priced whole at chars/4: with one turn there is nothing to clear or compact anyway, so
no decision ever needs a ``count_tokens`` call.

Two thresholds, as fractions of the budget:

- ``CLEAR_AT`` (70%): old, large tool results are replaced by a placeholder in the built
  request (the log keeps them): every result but those of the newest ``KEEP_TOOL_RESULTS``
  tool calls, if longer than ``CLEAR_MIN_CHARS``. The trigger is the size the request would
  have *uncleared*, which only grows until a compaction, so once on, clearing stays on: the
  request stays a pure function of the log, and its prefix stays stable for the prompt cache.
- ``COMPACT_AT`` (85%): a summarising model call replaces older turns (``compaction``). The
  15% left leaves room for the turn under way to grow before the next request is measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gateway.sessionlog.transcript import COMPACTION_FIELD, Transcript
from gateway.store.base import Body

CLEAR_AT = 0.70
COMPACT_AT = 0.85
TAIL_SHARE = 0.25
"""How much of the budget the turns a compaction keeps verbatim may take (at least one turn)."""
SUMMARY_SHARE = 0.125
"""The summary's ``max_tokens``, as a share of the budget (capped at ``MAX_SUMMARY_TOKENS``)."""
MAX_SUMMARY_TOKENS = 8192
KEEP_TOOL_RESULTS = 3
CLEAR_MIN_CHARS = 400
CHARS_PER_TOKEN = 4
DEFAULT_WINDOW = 200_000
KNOWN_WINDOWS = {
    "claude-opus-4": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-haiku-4": 200_000,
    "claude-3-7-sonnet": 200_000,
    "claude-3-5-haiku": 200_000,
    "claude-3-5-sonnet": 200_000,
}
"""Context windows by model id prefix; any other model gets ``DEFAULT_WINDOW``."""

SUMMARY_FIELD = "tether_summary"
"""Extra field on ``agent.thread_context_compacted``: the summary text."""
THROUGH_FIELD = "tether_through_seq"
"""Extra field on ``agent.thread_context_compacted``: the last seq of the log it summarises."""
SUMMARY_INTRO = (
    "Summary of the earlier part of this conversation (those turns were compacted to keep the "
    "context within its budget):"
)

REQUEST_CHARS_FIELD = "tether_request_chars"
"""Extra field on an ordinary ``span.model_request_start``: the request's size in characters."""

CLEARED = (
    "[This older tool result was cleared by Tether to keep the context within its budget. "
    "Call the tool again if you need its output.]"
)

Message = dict[str, Any]


def resume_point(transcript: Transcript) -> tuple[int, list[dict[str, Any]]]:
    """Where the conversation starts after the newest compaction (``compaction``): the seq it
    summarises through, and the summary as user content to put first."""
    compacted = transcript.compacted
    if compacted is None:
        return 0, []
    return int(compacted[THROUGH_FIELD]), [summary_block(str(compacted[SUMMARY_FIELD]))]


def summary_block(summary: str) -> dict[str, Any]:
    return {"type": "text", "text": f"{SUMMARY_INTRO}\n\n{summary}"}


def window_for(model_id: str) -> int:
    for prefix, window in KNOWN_WINDOWS.items():
        if model_id.startswith(prefix):
            return window
    return DEFAULT_WINDOW


@dataclass(frozen=True)
class Budget:
    window: int
    max_tokens: int

    @property
    def input_tokens(self) -> int:
        """Room for the request: the window less the reply (at least half the window, so a
        ``max_tokens`` configured near the window leaves compaction something to aim for)."""
        return max(self.window - self.max_tokens, self.window // 2)

    @property
    def clear_at(self) -> int:
        return int(self.input_tokens * CLEAR_AT)

    @property
    def compact_at(self) -> int:
        return int(self.input_tokens * COMPACT_AT)

    @property
    def tail_tokens(self) -> int:
        return int(self.input_tokens * TAIL_SHARE)

    @property
    def summary_tokens(self) -> int:
        return max(1, min(MAX_SUMMARY_TOKENS, int(self.input_tokens * SUMMARY_SHARE)))


def budget_for(model_id: str, window: int | None, max_tokens: int) -> Budget:
    return Budget(window or window_for(model_id), max_tokens)


def request_chars(request: dict[str, Any]) -> int:
    """What the size estimate counts: system prompt, tools and messages as JSON.

    One request is sized up to three times on its way (clearing, compaction, its start event),
    so the last answer is kept for that very object: requests are never changed once built.
    (Summing per-block sizes kept from call to call was tried: the interpreter's bookkeeping
    per block cost more than ``json.dumps`` of the whole conversation in C.)"""
    global _last_sized
    if _last_sized is not None and _last_sized[0] is request:
        return _last_sized[1]
    chars = sum(len(json.dumps(request[key])) for key in ("system", "tools", "messages") if key in request)
    _last_sized = (request, chars)
    return chars


_last_sized: tuple[dict[str, Any], int] | None = None


@dataclass(frozen=True)
class Measurement:
    """One request's size as the model counted it, and as ``request_chars`` counted it."""

    tokens: int
    chars: int


def last_measurement(transcript: Transcript) -> Measurement | None:
    """The newest successful ordinary request's reported size (a summarising call is not the
    context); ``None`` before the first, or when its start did not record its size."""
    end: Body | None = None
    for event in reversed(transcript.events):
        body = event.body
        if end is None:
            if event.type == "span.model_request_end" and not body.get("is_error"):
                if body.get(COMPACTION_FIELD):
                    continue
                end = body
        elif event.type == "span.model_request_start" and event.id == end.get("model_request_start_id"):
            chars = body.get(REQUEST_CHARS_FIELD)
            if not isinstance(chars, int):
                return None
            usage = end.get("model_usage") or {}
            tokens = sum(
                int(usage.get(key) or 0)
                for key in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
            )
            return Measurement(tokens, chars)
    return None


def estimate(request: dict[str, Any], measured: Measurement | None) -> int:
    """Tokens the request will hold: the last measurement plus the change, at chars/4."""
    chars = request_chars(request)
    if measured is None:
        return -(-chars // CHARS_PER_TOKEN)
    return max(0, measured.tokens + -(-(chars - measured.chars) // CHARS_PER_TOKEN))


def fitted(request: dict[str, Any], transcript: Transcript, budget: Budget) -> dict[str, Any]:
    """The request with old, large tool results cleared once it nears the budget."""
    if estimate(request, last_measurement(transcript)) < budget.clear_at:
        return request
    return {**request, "messages": clear_old_tool_results(request["messages"])}


def clear_old_tool_results(messages: list[Message], keep: int = KEEP_TOOL_RESULTS) -> list[Message]:
    """A copy in which every tool result but the newest ``keep`` holds a placeholder instead of
    content longer than ``CLEAR_MIN_CHARS``; ``is_error`` and cache marks stay as they were."""
    places = [
        (i, j)
        for i, message in enumerate(messages)
        if message["role"] == "user" and isinstance(message["content"], list)
        for j, block in enumerate(message["content"])
        if block.get("type") == "tool_result"
    ]
    old = places[: max(0, len(places) - keep)]
    large = [
        (i, j) for i, j in old if len(json.dumps(messages[i]["content"][j].get("content"))) > CLEAR_MIN_CHARS
    ]
    if not large:
        return messages
    out = [dict(message) for message in messages]
    for i, j in large:
        content = out[i]["content"] = list(out[i]["content"])
        content[j] = {**content[j], "content": [{"type": "text", "text": CLEARED}]}
    return out
