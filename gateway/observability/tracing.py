"""OpenTelemetry traces of session turns, with the GenAI semantic conventions.

One trace per harness run of a session (a turn: from picking up new input to idling):
a root ``invoke_agent`` span, a ``chat {model}`` child per model call attempt and an
``execute_tool {name}`` child per tool call the harness executes. Every span carries
``gen_ai.conversation.id`` = the session id, so a backend groups a session's turns.

``configure_tracing()`` exports over OTLP/HTTP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and registers the provider globally, so the
anthropic SDK's own client span and the MCP SDK's request spans nest under ours; when
unset, nothing is installed and every helper costs next to nothing (the API's no-op
tracer). The standard ``OTEL_*`` variables (service name, resource attributes, headers,
batch delays) apply as usual.

The span helpers also feed ``metrics`` (tool errors, call durations): they are the
harness's single instrumentation point.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import anyio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from gateway.observability.metrics import METRICS, Metrics

log = logging.getLogger("tether.tracing")

INSTRUMENTATION_NAME = "tether.harness"
PROVIDER_NAME = "anthropic"
TOOL_TYPES = {"agent": "extension", "mcp": "extension", "custom": "function"}
"""``gen_ai.tool.type``: toolset and MCP tools run outside the agent (extension); custom
tools are answered by the client application (function)."""

_provider: trace.TracerProvider | None = None
_conversation: ContextVar[str | None] = ContextVar("tether_conversation", default=None)


def configure_tracing(service_name: str = "tether-gateway") -> Callable[[], None]:
    """Install OTLP export if the environment asks for it; returns a shutdown function that
    flushes pending spans (call it when the gateway stops). Idempotent per process."""
    global _provider
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if not endpoint or disabled:
        return _nothing
    if _provider is not None:
        return _nothing
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win; ours replaces only the SDK's placeholder.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _provider = provider
    log.info("exporting traces over OTLP/HTTP to %s", endpoint)
    return provider.shutdown


def use_tracer_provider(provider: trace.TracerProvider | None) -> None:
    """Send the helpers' spans to ``provider`` (tests: an in-memory exporter); None restores
    the globally registered one."""
    global _provider
    _provider = provider


def _nothing() -> None:
    return None


def _tracer() -> trace.Tracer:
    if _provider is not None:
        return _provider.get_tracer(INSTRUMENTATION_NAME)
    return trace.get_tracer(INSTRUMENTATION_NAME)


def _record_exception(span: Span, exc: BaseException) -> None:
    """Cancellation (an interrupt or a shutdown) is an outcome, not a failure."""
    if not span.is_recording():
        return
    if _is_cancellation(exc):
        span.set_attribute("tether.cancelled", True)
        return
    span.record_exception(exc)
    span.set_attribute("error.type", str(getattr(exc, "error_type", None) or type(exc).__qualname__))
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        span.set_attribute("http.response.status_code", status)
    span.set_status(Status(StatusCode.ERROR, str(getattr(exc, "message", None) or exc)[:500]))


def _is_cancellation(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError | anyio.get_cancelled_exc_class())


@contextmanager
def _active(span: Span, conversation: str | None = None) -> Iterator[None]:
    """Make ``span`` current for the block; record an escaping exception; always end it."""
    token = otel_context.attach(trace.set_span_in_context(span))
    conversation_token = _conversation.set(conversation) if conversation is not None else None
    try:
        yield
    except BaseException as exc:
        _record_exception(span, exc)
        raise
    finally:
        if conversation_token is not None:
            _conversation.reset(conversation_token)
        otel_context.detach(token)
        span.end()


# Turn ----------------------------------------------------------------------------------------


@contextmanager
def turn_span(
    session_id: str,
    *,
    agent_id: str | None = None,
    agent_name: str | None = None,
    agent_version: int | None = None,
) -> Iterator[Span]:
    """The root span of one harness run of a session. Always starts a new trace, whatever
    context the run was woken from, so each turn is one trace."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": PROVIDER_NAME,
        "gen_ai.conversation.id": session_id,
    }
    if agent_id:
        attributes["gen_ai.agent.id"] = agent_id
    if agent_name:
        attributes["gen_ai.agent.name"] = agent_name
    if agent_version is not None:
        attributes["gen_ai.agent.version"] = str(agent_version)
    span = _tracer().start_span(
        f"invoke_agent {agent_name}" if agent_name else "invoke_agent",
        context=otel_context.Context(),
        kind=SpanKind.INTERNAL,
        attributes=attributes,
    )
    with _active(span, conversation=session_id):
        yield span


def set_stop_reason(reason: str) -> None:
    """Note why the turn ended on the current turn span (``end_turn``, ``requires_action``...)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("tether.stop_reason", reason)


# Model calls ---------------------------------------------------------------------------------


class ModelCall:
    """Handle yielded by ``model_span``: record the outcome of a successful call."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def record(self, usage: Mapping[str, int] | None, stop_reason: str | None = None) -> None:
        """``usage`` as the harness's ``ModelResult.usage`` (Messages API usage fields)."""
        usage = usage or {}
        attributes: dict[str, Any] = {
            "gen_ai.usage.input_tokens": int(usage.get("input_tokens") or 0),
            "gen_ai.usage.output_tokens": int(usage.get("output_tokens") or 0),
            "gen_ai.usage.cache_read.input_tokens": int(usage.get("cache_read_input_tokens") or 0),
            "gen_ai.usage.cache_creation.input_tokens": int(usage.get("cache_creation_input_tokens") or 0),
        }
        if stop_reason:
            attributes["gen_ai.response.finish_reasons"] = [stop_reason]
        self.span.set_attributes(attributes)


@contextmanager
def model_span(
    request: Mapping[str, Any],
    *,
    attempt: int = 1,
    session_id: str | None = None,
    metrics: Metrics | None = None,
) -> Iterator[ModelCall]:
    """One model call attempt. ``request`` is the Messages API request the harness sends;
    only its model, ``max_tokens`` and tool count are read (never message content). An
    exception escaping the block (``ModelCallFailed``) marks the span failed with its
    ``error_type`` and HTTP status."""
    model = str(request.get("model") or "unknown")
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER_NAME,
        "gen_ai.system": PROVIDER_NAME,
        "gen_ai.request.model": model,
        "tether.model.attempt": attempt,
    }
    if isinstance(request.get("max_tokens"), int):
        attributes["gen_ai.request.max_tokens"] = request["max_tokens"]
    if request.get("tools"):
        attributes["tether.model.tools"] = len(request["tools"])
    conversation = session_id or _conversation.get()
    if conversation:
        attributes["gen_ai.conversation.id"] = conversation
    span = _tracer().start_span(f"chat {model}", kind=SpanKind.INTERNAL, attributes=attributes)
    started = time.perf_counter()
    outcome = "error"
    try:
        with _active(span):
            yield ModelCall(span)
        outcome = "ok"
    except BaseException as exc:
        outcome = "cancelled" if _is_cancellation(exc) else "error"
        raise
    finally:
        (metrics or METRICS).model_call_duration.labels(outcome).observe(time.perf_counter() - started)


# Tool calls ----------------------------------------------------------------------------------


class ToolCall:
    """Handle yielded by ``tool_span``: record whether the tool reported an error."""

    def __init__(self, span: Span) -> None:
        self.span = span
        self.is_error = False

    def result(self, is_error: bool) -> None:
        self.is_error = is_error
        if is_error:
            self.span.set_attribute("error.type", "tool_error")
            self.span.set_status(Status(StatusCode.ERROR, "the tool returned an error result"))


@contextmanager
def tool_span(
    name: str,
    call_id: str,
    kind: str,
    *,
    server: str | None = None,
    permission: str | None = None,
    session_id: str | None = None,
    metrics: Metrics | None = None,
) -> Iterator[ToolCall]:
    """One tool call the harness executes. ``kind`` is ``agent`` (the sandbox toolset),
    ``mcp`` or ``custom``; ``call_id`` is the ``*_tool_use`` event id the result links to."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": TOOL_TYPES.get(kind, "extension"),
        "tether.tool.kind": kind,
    }
    if server:
        attributes["tether.mcp.server_name"] = server
    if permission:
        attributes["tether.permission"] = permission
    conversation = session_id or _conversation.get()
    if conversation:
        attributes["gen_ai.conversation.id"] = conversation
    recorder = metrics or METRICS
    span = _tracer().start_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attributes)
    call = ToolCall(span)
    started = time.perf_counter()
    failed = False
    try:
        with _active(span):
            yield call
    except BaseException as exc:
        failed = not _is_cancellation(exc)
        raise
    finally:
        recorder.tool_calls.labels(kind).inc()
        recorder.tool_call_duration.labels(kind).observe(time.perf_counter() - started)
        if failed or call.is_error:
            recorder.tool_errors.labels(kind).inc()
