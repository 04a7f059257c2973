"""A model turn: the request built from the log (compacted when it must be), sent with
retries, each attempt a ``span.model_request_*`` pair, and the reply logged as events.

The harness (``loop``) decides when a turn is due; this module takes it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio

from gateway.harness import compaction, file_blocks
from gateway.harness.context_budget import REQUEST_CHARS_FIELD, request_chars
from gateway.harness.model import ModelCallFailed, ModelResult, call_model
from gateway.harness.previews import PreviewHub, ResponsePreview
from gateway.harness.responses import request_end, response_events
from gateway.harness.retry import RetryPolicy, is_retryable
from gateway.harness.run import Run
from gateway.observability import tracing
from gateway.resources import sessions as session_state
from gateway.sessionlog import events as ev
from gateway.sessionlog.transcript import CONTEXT_SEQ_FIELD
from gateway.store.base import Body, StoredEvent
from gateway.tools.toolbox import Toolbox
from policies.engine import PolicySet

log = logging.getLogger("tether.harness")


class Host(compaction.Host, Protocol):
    """What a model turn needs from the harness, besides what compaction does."""

    retry: RetryPolicy
    previews: PreviewHub
    policies: PolicySet

    async def append(self, run: Run, *bodies: Body) -> list[StoredEvent]: ...


async def call_with_retries(
    host: Host, run: Run, request: dict[str, Any], context_seq: int
) -> tuple[ModelResult, str, ResponsePreview] | None:
    """One model request per attempt, each a ``span.model_request_*`` pair in the log; a failed
    attempt is a ``session.error`` saying whether it will be retried. Only a completed response
    is returned: a broken one leaves nothing in the log but its closed span and the error.

    A retryable failure on the last attempt is ``exhausted`` (the caller idles the session);
    a non-retryable one is ``terminal`` and terminates the session, as the SDK documents."""
    await host.model.sdk()  # loaded first, so a span opens only as its request goes out
    for attempt in range(1, host.retry.max_attempts + 1):
        fields = {CONTEXT_SEQ_FIELD: context_seq, REQUEST_CHARS_FIELD: request_chars(request)}
        start = ev.new_event("span.model_request_start", **fields)
        anchor = (await host.append(run, start))[-1].seq
        preview = ResponsePreview(host.previews, run.session_id, anchor)
        run.model_start_id = start["id"]
        try:
            with tracing.model_span(request, attempt=attempt) as span:
                sent = await file_blocks.inline(request, host.uploads)  # the log keeps file ids
                result = await call_model(host.model, sent, preview.feed)
                span.record(result.usage, result.stop_reason)
            return result, start["id"], preview
        except ModelCallFailed as exc:
            retryable = is_retryable(exc.status)
            retrying = retryable and attempt < host.retry.max_attempts
            log.warning("model call %d for %s failed: %s", attempt, run.session_id, exc.message)
            status = "retrying" if retrying else ("exhausted" if retryable else "terminal")
            if exc.usage:  # billed although it failed: it counts towards the budget
                await session_state.add_usage(host.store, run.session_id, exc.usage, host.prices)
            closing = [
                request_end(start["id"], exc.usage, is_error=True),
                ev.session_error(exc.error_type, exc.message, status),
            ]
            if status == "terminal":
                closing.append(ev.new_event("session.status_terminated"))
            await host.append(run, *closing)
            run.model_start_id = None
            if not retrying:
                return None
            await anyio.sleep(host.retry.delay(attempt, exc.retry_after))
        except Exception:
            # Not the model's failure but ours: still close the request before it propagates.
            await host.append(run, request_end(start["id"], None, is_error=True))
            run.model_start_id = None
            raise
    return None


async def take(
    host: Host, run: Run, agent: Body, toolbox: Toolbox, over_budget: Callable[[Run], Awaitable[bool]]
) -> str:
    """One model turn: ``answered``, ``failed`` (recorded in the log) or ``over_budget`` (a
    summarising call spent what was left, so the request itself never went out)."""
    before = run.last_seq
    fitted = await compaction.fitted_request(host, run, agent, toolbox)
    if fitted is None:  # over the context budget, and compacting it failed (recorded)
        return "failed"
    transcript, request = fitted
    if transcript.last_seq != before and await over_budget(run):
        return "over_budget"
    outcome = await call_with_retries(host, run, request, transcript.last_seq)
    if outcome is None:
        return "failed"
    result, start_id, preview = outcome
    produced = response_events(result.content, toolbox, host.policies)
    preview.assign_ids(produced)
    # Charged first: a crash before the events land costs a repeated call, never a free one.
    await session_state.add_usage(host.store, run.session_id, result.usage, host.prices)
    await host.append(run, *produced, request_end(start_id, result.usage, is_error=False))
    run.model_start_id = None
    return "answered"
