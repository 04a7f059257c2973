"""Compaction: near the budget, a summary replaces older turns in the model's context.

The log is never rewritten. A summarising model call, under its own ``SUMMARY_SYSTEM_PROMPT``
and with its own ``span.model_request_start``/``end`` pair (both marked ``COMPACTION_FIELD``;
its usage counts in the session's), summarises the conversation up to a cut. The summary is
recorded as an ``agent.thread_context_compacted`` event (the SDK's type) with two extra fields:

- ``tether_summary``: the summary text;
- ``tether_through_seq``: the last seq of the log it summarises.

From then on a request's conversation is the summary, as the first user content (after
``context_budget.SUMMARY_INTRO``), followed by the events after ``tether_through_seq`` as ``build_messages``
builds them; a later compaction summarises the previous summary with the turns since. All of
it is a function of the log, so a restart rebuilds the same request.

Where to cut (``cut_points``): only where the log up to the cut is a closed conversation, so
no tool use is parted from its result and no message that arrived during a model request
(from the seq its context was built from to its end) from the reply it follows. Of those, the
earliest that keeps at most ``TAIL_SHARE`` of the budget verbatim, else the newest: the most
recent turn always stays as it was.

A failed summarising call is a ``session.error`` with the model error's type. If the request
fits the budget uncompacted, the turn goes on (``retrying``: compaction is tried again before
the next request); if not, the turn ends (``exhausted``, the session idles with
``retries_exhausted``) rather than send a request over the budget.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

from gateway.harness import context_budget as sizing
from gateway.harness import file_blocks
from gateway.harness.context import build_messages
from gateway.harness.model import FAILED, ModelCallFailed, ModelClient, call_model
from gateway.harness.request import build_request
from gateway.harness.responses import request_end
from gateway.observability import tracing
from gateway.pricing import PriceTable
from gateway.resources import agent_settings
from gateway.resources import sessions as session_state
from gateway.sessionlog import events as ev
from gateway.sessionlog.transcript import (
    COMPACTION_FIELD,
    CONTEXT_SEQ_FIELD,
    RESULT_LINKS,
    TOOL_USE_KINDS,
    Transcript,
)
from gateway.store.base import Body, Store, StoredEvent
from gateway.tools.toolbox import Toolbox

if TYPE_CHECKING:
    from gateway.harness.run import Run

log = logging.getLogger("tether.compaction")

SUMMARY_SYSTEM_PROMPT = """Tether context compaction.

You are summarising the conversation so far between a user and an AI agent. Your summary \
replaces that conversation in the agent's context: the agent continues from your summary and \
the most recent turns alone, so it must be able to carry on without the original messages.

Keep the user's goals, instructions and constraints; the facts, names, numbers, identifiers, \
file paths and decisions established; what was done, which tools were called and what they \
found; and what is still open or was about to happen next. Quote exact values (codes, paths, \
commands) instead of paraphrasing them. If the conversation starts with an earlier summary, \
fold it into yours without dropping what it says.

Write only the summary, as plain text. Do not call tools."""

SUMMARY_INSTRUCTION = "Write the summary of the conversation above now."
AGENT_INSTRUCTIONS = "The agent's own instructions, for reference:"


class Host(Protocol):
    """What compaction needs from the harness: the model, the log, and fenced appends."""

    store: Store
    model: ModelClient
    uploads: file_blocks.Uploads | None
    max_output_tokens: int
    prompt_caching: bool
    prices: PriceTable

    async def transcript(self, run: Run) -> Transcript: ...

    async def append(self, run: Run, *bodies: Body) -> object: ...


async def fitted_request(
    host: Host, run: Run, agent: Body, toolbox: Toolbox
) -> tuple[Transcript, dict[str, Any]] | None:
    """The next request, compacting first when it nears the budget, and the transcript it was
    built from; ``None`` when it is over the budget and compaction failed (recorded)."""

    def build(transcript: Transcript) -> dict[str, Any]:
        return build_request(agent, transcript, toolbox, host.max_output_tokens, host.prompt_caching)

    transcript = await host.transcript(run)
    request = build(transcript)
    settings = agent_settings.of(agent)
    if settings.compaction is False:
        return transcript, request
    budget = sizing.budget_for(agent["model"]["id"], settings.context_window_tokens, request["max_tokens"])
    tokens = sizing.estimate(request, sizing.last_measurement(transcript))
    if tokens < budget.compact_at:
        return transcript, request
    through, _ = sizing.resume_point(transcript)
    cut = choose_cut(transcript, through, budget.tail_tokens)
    if cut is None:
        log.info("%s: ~%d tokens but no turn to compact", run.session_id, tokens)
        return transcript, request
    failure = await _summarise(host, run, summary_request(agent, transcript, toolbox, cut, budget), cut)
    if failure is not None:
        fits = tokens <= budget.input_tokens
        outcome = (
            "going on uncompacted" if fits else f"~{tokens} tokens exceed the budget of {budget.input_tokens}"
        )
        message = f"compacting the context failed ({failure.message}); {outcome}"
        await host.append(
            run, ev.session_error(failure.error_type, message, "retrying" if fits else "exhausted")
        )
        return (transcript, request) if fits else None
    transcript = await host.transcript(run)
    return transcript, build(transcript)


def summary_request(
    agent: Body, transcript: Transcript, toolbox: Toolbox, cut: int, budget: sizing.Budget
) -> dict[str, Any]:
    """The summarising request: the conversation through ``cut`` (as the context shows it,
    from the previous summary on) and the instruction to summarise it."""
    through, first = sizing.resume_point(transcript)
    prefix = Transcript.from_events([event for event in transcript.events if event.seq <= cut])
    messages = build_messages(prefix, toolbox.exposed_name, through, first)
    messages = _without_thinking(sizing.clear_old_tool_results(messages))
    instruction = {"type": "text", "text": SUMMARY_INSTRUCTION}
    if messages and messages[-1]["role"] == "user":
        messages[-1] = {**messages[-1], "content": [*messages[-1]["content"], instruction]}
    else:
        messages.append({"role": "user", "content": [instruction]})
    system = SUMMARY_SYSTEM_PROMPT
    if agent.get("system"):
        system += f"\n\n{AGENT_INSTRUCTIONS}\n{agent['system']}"
    request: dict[str, Any] = {
        "model": agent["model"]["id"],
        "max_tokens": budget.summary_tokens,
        "system": system,
        "messages": messages,
    }
    tools = toolbox.model_tools()
    if tools:  # the API wants the tools of the tool uses it is shown, but none may be called
        request["tools"] = tools
        request["tool_choice"] = {"type": "none"}
    return request


def choose_cut(transcript: Transcript, after_seq: int, tail_tokens: int) -> int | None:
    """The earliest cut leaving at most ``tail_tokens`` (chars/4) after it, else the newest."""
    points = cut_points(transcript, after_seq)
    if not points:
        return None
    tail = 0
    tails: dict[int, int] = {}
    events = transcript.events
    index = len(events) - 1
    for point in reversed(points):
        while index >= 0 and events[index].seq > point:
            tail += _conversation_chars(events[index])
            index -= 1
        tails[point] = tail
    for point in points:
        if tails[point] <= tail_tokens * sizing.CHARS_PER_TOKEN:
            return point
    return points[-1]


def cut_points(transcript: Transcript, after_seq: int) -> list[int]:
    """Seqs after ``after_seq`` where the log up to them is a closed conversation, with
    something new to summarise: just before a user message, or at the seq a model request's
    context was built from; never while a tool use awaits its result or a request is open."""
    events = [event for event in transcript.events if event.seq > after_seq]
    if not events:
        return []
    base, last = events[0].seq, events[-1].seq
    blocked = [0] * (last - base + 2)

    def block(low: int, high: int) -> None:
        """No cut at ``low <= seq < high``."""
        low, high = max(low, base), min(high, last + 1)
        if low < high:
            blocked[low - base] += 1
            blocked[high - base] -= 1

    open_uses: dict[str, int] = {}
    contexts: dict[str, int] = {}
    candidates: list[int] = []
    for event in events:
        kind, body = event.type, event.body
        if kind in TOOL_USE_KINDS:
            open_uses[event.id] = event.seq
        elif kind in RESULT_LINKS:
            used = open_uses.pop(body[RESULT_LINKS[kind]], None)
            if used is not None:
                block(used, event.seq)
        elif kind == "user.interrupt":  # the uses it abandons are closed in the conversation
            for used in open_uses.values():
                block(used, event.seq)
            open_uses.clear()
        elif kind == "user.message":
            candidates.append(event.seq - 1)
        elif kind == "span.model_request_start" and not body.get(COMPACTION_FIELD):
            context = body.get(CONTEXT_SEQ_FIELD)
            contexts[event.id] = context if isinstance(context, int) else event.seq - 1
            candidates.append(contexts[event.id])
        elif kind == "span.model_request_end":
            context = contexts.pop(str(body.get("model_request_start_id")), None)
            if context is not None:
                block(context + 1, event.seq)
    for used in open_uses.values():
        block(used, last + 1)
    for context in contexts.values():
        block(context + 1, last + 1)
    closed: set[int] = set()
    depth, said = 0, False
    wanted = set(candidates)
    for event in events:
        depth += blocked[event.seq - base]
        said = said or _conversation_chars(event) > 0
        if event.seq in wanted and depth == 0 and said:
            closed.add(event.seq)
    return sorted(closed)


async def _summarise(host: Host, run: Run, request: dict[str, Any], cut: int) -> ModelCallFailed | None:
    """One summarising call; on success the compaction is in the log, else the failure."""
    await host.model.sdk()  # loaded first, so the span opens only as its request goes out
    start = ev.new_event("span.model_request_start", **{COMPACTION_FIELD: True})
    await host.append(run, start)
    run.model_start_id = start["id"]
    try:
        with tracing.model_span(request) as span:
            result = await call_model(host.model, await file_blocks.inline(request, host.uploads))
            span.record(result.usage, result.stop_reason)
    except ModelCallFailed as exc:
        if exc.usage:  # billed although it failed
            await session_state.add_usage(host.store, run.session_id, exc.usage, host.prices)
        await host.append(run, request_end(start["id"], exc.usage, is_error=True))
        run.model_start_id = None
        return exc
    except Exception:
        await host.append(run, request_end(start["id"], None, is_error=True))
        run.model_start_id = None
        raise
    summary = "\n".join(b["text"] for b in result.content if b["type"] == "text").strip()
    end = {**request_end(start["id"], result.usage, is_error=not summary), COMPACTION_FIELD: True}
    closing: list[Body] = [end]
    if summary:
        closing.append(
            ev.new_event(
                "agent.thread_context_compacted", **{sizing.SUMMARY_FIELD: summary, sizing.THROUGH_FIELD: cut}
            )
        )
    await host.append(run, *closing)
    run.model_start_id = None
    await session_state.add_usage(host.store, run.session_id, result.usage, host.prices)
    return None if summary else ModelCallFailed(FAILED, "the model returned no summary text")


def _conversation_chars(event: StoredEvent) -> int:
    """What an event adds to the conversation, in characters (0 for the rest of the log)."""
    kind, body = event.type, event.body
    if kind in ("user.message", "agent.message", "system.message") or kind in RESULT_LINKS:
        return len(json.dumps(body.get("content") or []))
    if kind == "user.define_outcome":
        return len(str(body.get("description", "")))
    if kind == "span.outcome_evaluation_end":
        return len(str(body.get("explanation", "")))
    if kind in TOOL_USE_KINDS:
        return len(json.dumps(body.get("input") or {})) + len(str(body.get("name", "")))
    if kind == "agent.thinking":
        return len(json.dumps(body.get(ev.THINKING_BLOCK_FIELD) or ""))
    return 0


def _without_thinking(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summariser needs no thinking blocks (and thinking is off for it), nor the session's
    system messages (they would bind the summary too, e.g. "answer in one word"; they follow
    the summary anyway, see ``context.build_messages``): drop them, and any message left empty,
    merging the neighbours that then share a role."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "system":
            continue
        content = [b for b in message["content"] if b.get("type") not in ("thinking", "redacted_thinking")]
        if not content:
            continue
        if out and out[-1]["role"] == message["role"]:
            out[-1] = {**out[-1], "content": [*out[-1]["content"], *content]}
        else:
            out.append({**message, "content": content})
    return out
