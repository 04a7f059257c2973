"""Outcomes: after each turn of work towards a ``user.define_outcome``, a grader decides.

The grader is a separate model call that sees only the task, the rubric and the agent's
report of its work (its messages since the outcome or the last revision request), never the
agent's context, and answers through a ``grade`` tool: ``satisfied``, ``needs_revision`` (with
what to fix) or ``failed`` (the rubric cannot apply). Each evaluation is a
``span.outcome_evaluation_start``/``_end`` pair in the log, with ``_ongoing`` heartbeats while the
grader works; ``needs_revision`` on the last allowed iteration becomes ``max_iterations_reached``.
What the agent is told next is rebuilt from the log (``sessionlog.outcomes.feedback``).

An evaluation cut off by a crash resumes with the same start; one cut off by an interrupt ends
as ``interrupted``. Grader calls count towards the session's usage and budget.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import anyio

from gateway.harness import file_blocks
from gateway.harness.model import ModelCallFailed, ModelClient, call_model
from gateway.harness.responses import model_usage
from gateway.harness.retry import RetryPolicy, is_retryable
from gateway.harness.run import Run
from gateway.pricing import PriceTable
from gateway.resources import sessions as session_state
from gateway.sessionlog import events as ev
from gateway.sessionlog.outcomes import OutcomeState
from gateway.sessionlog.transcript import Transcript
from gateway.store.base import Body, Store

log = logging.getLogger("tether.harness")

GRADER_MAX_TOKENS = 2048
VERDICTS = ("satisfied", "needs_revision", "failed")
GRADER_SYSTEM = (
    "You grade an AI agent's work against a rubric. You see the task, the rubric and the "
    "agent's report of its work, not its conversation. Call the grade tool once: 'satisfied' "
    "if every criterion of the rubric is met; 'needs_revision' if some are not, explaining "
    "which and why so the agent can fix them; 'failed' if the rubric cannot apply to this work."
)
GRADE_TOOL = {
    "name": "grade",
    "description": "Record the verdict on the agent's work.",
    "input_schema": {
        "type": "object",
        "properties": {
            "result": {"type": "string", "enum": list(VERDICTS)},
            "explanation": {"type": "string", "description": "Why: for needs_revision, what to fix."},
        },
        "required": ["result", "explanation"],
    },
}
SYNCED = "outcomes.synced"
"""``Transcript.memo`` key: the entry last written to the session, so an unchanged one is not."""


class Host(Protocol):
    store: Store
    model: ModelClient
    uploads: file_blocks.Uploads | None
    retry: RetryPolicy
    prices: PriceTable
    outcome_heartbeat_seconds: float

    async def transcript(self, run: Run) -> Transcript: ...

    async def append(self, run: Run, *bodies: Body) -> object: ...


async def sync(store: Store, session_id: str, transcript: Transcript) -> None:
    """Bring the session's ``outcome_evaluations`` up to date with the log: the current
    outcome's entry, and any older one still open (defined in a race) closed as superseded."""
    entry = transcript.outcome_entry()
    if entry is None or transcript.memo.get(SYNCED) == entry:
        return
    await session_state.record_outcome(store, session_id, entry, supersede=True)
    transcript.memo[SYNCED] = entry


class GraderUnavailable(Exception):
    """The grader kept failing with errors worth retrying: the evaluation stays open, and is
    taken up again on the session's next run, as a model turn that runs out of retries is."""


async def evaluate(host: Host, run: Run, agent: Body, transcript: Transcript) -> bool:
    """One evaluation of the open outcome (``transcript.needs_evaluation()``), logged; False when
    the grader could not be reached (``retries_exhausted``; the evaluation stays open)."""
    assert transcript.outcome is not None
    if transcript.outcome.open_start is None:  # else resumed: a crash cut the previous one off
        outcome = transcript.outcome
        start = ev.new_event(
            "span.outcome_evaluation_start", outcome_id=outcome.outcome_id, iteration=outcome.iteration
        )
        await host.append(run, start)
        transcript = await host.transcript(run)
    current = transcript.outcome
    assert current is not None and current.open_start is not None
    await sync(host.store, run.session_id, transcript)
    start_id, start_seq = current.open_start
    if transcript.last_interrupt_seq > start_seq:
        result, explanation, usage = "interrupted", "An interrupt arrived during the evaluation.", None
    else:
        try:
            result, explanation, usage = await _graded(host, run, _grader_request(agent, current, transcript))
        except GraderUnavailable as exc:
            if exc.args[0]:
                await session_state.add_usage(host.store, run.session_id, exc.args[0], host.prices)
            return False
        if (await host.transcript(run)).last_interrupt_seq > start_seq:  # sent to another replica
            result, explanation = "interrupted", "An interrupt arrived during the evaluation."
    if result == "needs_revision" and current.iteration + 1 >= current.max_iterations:
        result = "max_iterations_reached"
    if usage:
        await session_state.add_usage(host.store, run.session_id, usage, host.prices)
    end = ev.new_event(
        "span.outcome_evaluation_end",
        outcome_id=current.outcome_id,
        iteration=current.iteration,
        outcome_evaluation_start_id=start_id,
        result=result,
        explanation=explanation,
        usage=model_usage(usage),
    )
    await host.append(run, end)
    await sync(host.store, run.session_id, await host.transcript(run))
    return True


def _grader_request(agent: Body, outcome: OutcomeState, transcript: Transcript) -> dict[str, Any]:
    rubric = outcome.definition["rubric"]
    report = "\n\n".join(
        block["text"]
        for event in transcript.events_after(outcome.input_seq)
        if event.type == "agent.message"
        for block in event.body["content"]
        if block.get("type") == "text"
    )
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": f"<task>\n{outcome.definition['description']}\n</task>"}
    ]
    if rubric["type"] == "text":
        parts.append({"type": "text", "text": f"<rubric>\n{rubric['content']}\n</rubric>"})
    else:  # a file: the document block is filled in from the upload when sent
        parts += [
            {"type": "text", "text": "The rubric is the attached document."},
            {"type": "document", "source": {"type": "file", "file_id": rubric["file_id"]}},
        ]
    parts.append(
        {"type": "text", "text": f"<agent_report>\n{report or '(the agent said nothing)'}\n</agent_report>"}
    )
    return {
        "model": agent["model"]["id"],
        "max_tokens": GRADER_MAX_TOKENS,
        "system": GRADER_SYSTEM,
        "messages": [{"role": "user", "content": parts}],
        "tools": [GRADE_TOOL],
        "tool_choice": {"type": "tool", "name": "grade"},
    }


async def _graded(host: Host, run: Run, request: dict[str, Any]) -> tuple[str, str, dict[str, int] | None]:
    """(result, explanation, usage of every attempt), with heartbeats while the grader works."""
    outcome = (await host.transcript(run)).outcome
    assert outcome is not None

    async def heartbeats() -> None:
        while True:
            await anyio.sleep(host.outcome_heartbeat_seconds)
            beat = ev.new_event(
                "span.outcome_evaluation_ongoing", outcome_id=outcome.outcome_id, iteration=outcome.iteration
            )
            try:
                await host.append(run, beat)
            except Exception:  # a lost lease or a store outage: the grading itself will say
                log.warning("outcome heartbeat for %s not logged; no more this evaluation", run.session_id)
                return

    graded: tuple[str, str, dict[str, int] | None] | GraderUnavailable | None = None
    async with anyio.create_task_group() as beating:
        beating.start_soon(heartbeats)
        try:
            graded = await _grade(host, request)
        except GraderUnavailable as exc:  # raised out here, not wrapped in the group's ExceptionGroup
            graded = exc
        finally:
            beating.cancel_scope.cancel()
    if isinstance(graded, GraderUnavailable):
        raise graded
    assert graded is not None
    return graded


async def _grade(host: Host, request: dict[str, Any]) -> tuple[str, str, dict[str, int] | None]:
    spent: dict[str, int] = {}
    sent = await file_blocks.inline(request, host.uploads)
    for attempt in range(1, host.retry.max_attempts + 1):
        try:
            result = await call_model(host.model, sent)
        except ModelCallFailed as exc:
            _add(spent, exc.usage)
            if not is_retryable(exc.status):
                log.warning("the outcome grader failed: %s", exc.message)
                return "failed", f"The grader could not give a verdict: {exc.message}", spent or None
            if attempt < host.retry.max_attempts:
                await anyio.sleep(host.retry.delay(attempt, exc.retry_after))
                continue
            log.warning("the outcome grader is unavailable: %s", exc.message)
            raise GraderUnavailable(spent or None) from None
        _add(spent, result.usage)
        for block in result.content:
            verdict = block.get("input") or {}
            if (
                block.get("type") == "tool_use"
                and block.get("name") == "grade"
                and verdict.get("result") in VERDICTS
            ):
                return str(verdict["result"]), str(verdict.get("explanation") or ""), spent
        return "failed", "The grader gave no verdict.", spent
    raise AssertionError("unreachable")


def _add(total: dict[str, int], usage: dict[str, int] | None) -> None:
    for key, value in (usage or {}).items():
        total[key] = total.get(key, 0) + value
