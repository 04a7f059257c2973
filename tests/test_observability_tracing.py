"""OpenTelemetry: the span helpers called the way the harness calls them (in-memory
exporter), and a real gateway exporting a session's turn over OTLP/HTTP to a loopback
receiver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from gateway.harness.model import ModelCallFailed
from gateway.observability import tracing
from gateway.observability.metrics import Metrics
from tests.conftest import Scripts
from tests.support.observability import (
    Receiver,
    observability_gateway,
    otlp_spans,
    receiving,
    sdk,
    toolset_agent,
)
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_tracer_provider(provider)
    try:
        yield exporter
    finally:
        tracing.use_tracer_provider(None)
        provider.shutdown()


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def _one_turn(metrics: Metrics) -> None:
    """What ``Harness.run`` does for a turn with a failed attempt, a retry and a tool call."""
    request = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "messages": [], "tools": [{"name": "read"}]}
    with tracing.turn_span("sesn_1", agent_id="agent_1", agent_name="coder", agent_version=2):
        with pytest.raises(ModelCallFailed), tracing.model_span(request, attempt=1, metrics=metrics):
            raise ModelCallFailed("model_overloaded_error", "HTTP 529: busy", 529)
        with tracing.model_span(request, attempt=2, metrics=metrics) as call:
            await anyio.lowlevel.checkpoint()
            call.record(
                {"input_tokens": 120, "output_tokens": 30, "cache_read_input_tokens": 100}, "tool_use"
            )
        with tracing.tool_span("read", "sevt_use1", "agent", permission="allow", metrics=metrics) as tool:
            await anyio.lowlevel.checkpoint()
            tool.result(is_error=True)
        with tracing.tool_span("lookup", "sevt_use2", "mcp", server="crm", metrics=metrics) as tool:
            tool.result(is_error=False)


@pytest.mark.anyio
async def test_a_turn_is_one_trace_with_model_and_tool_spans_in_gen_ai_terms(
    exporter: InMemorySpanExporter,
) -> None:
    metrics = Metrics(process_metrics=False)
    await _one_turn(metrics)

    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [
        "chat claude-sonnet-4-6",
        "chat claude-sonnet-4-6",
        "execute_tool read",
        "execute_tool lookup",
        "invoke_agent coder",
    ]
    turn = spans[-1]
    assert turn.parent is None
    assert {s.context.trace_id for s in spans} == {turn.context.trace_id}
    assert all(s.parent is not None and s.parent.span_id == turn.context.span_id for s in spans[:-1])
    assert dict(turn.attributes or {}) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.conversation.id": "sesn_1",
        "gen_ai.agent.id": "agent_1",
        "gen_ai.agent.name": "coder",
        "gen_ai.agent.version": "2",
    }

    failed, answered = spans[0], spans[1]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and answered.attributes is not None
    assert failed.attributes["error.type"] == "model_overloaded_error"
    assert failed.attributes["http.response.status_code"] == 529
    assert failed.attributes["tether.model.attempt"] == 1
    assert answered.status.status_code is StatusCode.UNSET
    assert {k: answered.attributes[k] for k in answered.attributes if k.startswith("gen_ai.")} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "anthropic",
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-sonnet-4-6",
        "gen_ai.request.max_tokens": 1024,
        "gen_ai.conversation.id": "sesn_1",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "gen_ai.usage.cache_read.input_tokens": 100,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.response.finish_reasons": ("tool_use",),
    }

    read, lookup = spans[2], spans[3]
    assert read.attributes is not None and lookup.attributes is not None
    assert read.attributes["gen_ai.operation.name"] == "execute_tool"
    assert read.attributes["gen_ai.tool.name"] == "read"
    assert read.attributes["gen_ai.tool.call.id"] == "sevt_use1"
    assert read.attributes["gen_ai.conversation.id"] == "sesn_1"
    assert read.attributes["tether.permission"] == "allow"
    assert read.status.status_code is StatusCode.ERROR and read.attributes["error.type"] == "tool_error"
    assert lookup.attributes["tether.mcp.server_name"] == "crm"
    assert lookup.status.status_code is StatusCode.UNSET

    assert metrics.tool_errors.labels("agent")._value.get() == 1
    assert metrics.tool_errors.labels("mcp")._value.get() == 0
    assert metrics.tool_calls.labels("mcp")._value.get() == 1


@pytest.mark.anyio
async def test_separate_turns_are_separate_traces_and_an_interrupt_is_not_an_error(
    exporter: InMemorySpanExporter,
) -> None:
    metrics = Metrics(process_metrics=False)
    with tracing.turn_span("sesn_2"):
        pass
    with anyio.CancelScope() as scope, tracing.turn_span("sesn_2"):
        with tracing.tool_span("bash", "sevt_b", "agent", metrics=metrics):
            scope.cancel()
            await anyio.sleep(1)

    first, tool, second = exporter.get_finished_spans()
    assert first.context.trace_id != second.context.trace_id
    assert tool.parent is not None and tool.parent.span_id == second.context.span_id
    for span in (tool, second):
        assert span.attributes is not None and span.attributes["tether.cancelled"] is True
        assert span.status.status_code is StatusCode.UNSET
    assert metrics.tool_errors.labels("agent")._value.get() == 0


def test_without_an_otlp_endpoint_nothing_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    shutdown = tracing.configure_tracing()
    with tracing.turn_span("sesn_3") as span:
        assert not span.is_recording()
    shutdown()


# A real gateway exporting over OTLP ----------------------------------------------------------


@pytest.fixture(scope="module")
def collector() -> Iterator[Receiver]:
    with receiving() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str, collector: Receiver
) -> Iterator[ServerProcess]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": "tether-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    with observability_gateway(tmp_path_factory.mktemp("traced"), model_server.url, api_key, env) as server:
        yield server


def test_a_session_turn_is_exported_over_otlp(
    traced: ServerProcess, api_key: str, scripts: Scripts, collector: Receiver
) -> None:
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "tool_use", "name": "write", "input": {"file_path": "a.txt", "content": "a"}}
                ]
            },
            {"content": [{"type": "text", "text": "done"}]},
        ]
    )
    with sdk(traced, api_key) as client:
        environment = client.beta.environments.create(name="otlp-env")
        session = client.beta.sessions.create(
            agent=toolset_agent(client, marker, name="traced-agent").id, environment_id=environment.id
        )
        streamed = send_and_stream(client, session.id, [user_message("write a")])
    use = next(e for e in streamed if e.type == "agent.tool_use")

    def turn_exported(requests: list[Any]) -> list[dict[str, Any]] | None:
        spans = [
            s for s in otlp_spans(requests) if s["attributes"].get("gen_ai.conversation.id") == session.id
        ]
        names = [s["name"] for s in spans]
        return spans if "invoke_agent traced-agent" in names else None

    spans = collector.wait(turn_exported, timeout=20)
    turn = next(s for s in spans if s["name"] == "invoke_agent traced-agent")
    ours = [
        s for s in spans if s["trace_id"] == turn["trace_id"] and s["scope"] == tracing.INSTRUMENTATION_NAME
    ]
    assert turn["service"] == "tether-under-test"
    assert sorted(s["name"] for s in ours) == [
        "chat claude-sonnet-4-6",
        "chat claude-sonnet-4-6",
        "execute_tool write",
        "invoke_agent traced-agent",
    ]
    tool = next(s for s in ours if s["name"] == "execute_tool write")
    assert tool["attributes"]["gen_ai.tool.call.id"] == use.id
    assert tool["parent_id"] == turn["span_id"]
    model = next(s for s in ours if s["name"].startswith("chat"))
    assert model["attributes"]["gen_ai.usage.output_tokens"] > 0
    assert model["attributes"]["gen_ai.request.model"] == "claude-sonnet-4-6"
