"""Prometheus metrics: the ASGI middleware in isolation, the log-derived figures, and a
real gateway scraped over HTTP while sessions run."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from gateway.observability.metrics import Metrics, MetricsMiddleware
from gateway.store.base import StoredEvent
from tests.conftest import Scripts
from tests.support.observability import observability_gateway, sdk, toolset_agent, wait_until
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one sample in an exposition (0 when absent)."""
    for family in text_string_to_metric_families(metrics_text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
    return 0.0


# The middleware in isolation -----------------------------------------------------------------


def _app(release: anyio.Event) -> Starlette:
    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def stream(request: Request) -> StreamingResponse:
        async def frames() -> AsyncIterator[str]:
            yield "event: first\ndata: {}\n\n"
            await release.wait()
            yield "event: last\ndata: {}\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream")

    return Starlette(routes=[Route("/items/{item_id}", item), Route("/stream", stream)])


async def _call(app: Any, path: str, on_message: Any = None) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }
    disconnected = anyio.Event()

    async def receive() -> dict[str, Any]:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if on_message is not None:
            await on_message(message)

    await app(scope, receive, send)
    disconnected.set()
    return sent


@pytest.mark.anyio
async def test_middleware_labels_requests_by_route_template_and_status() -> None:
    metrics = Metrics(process_metrics=False)
    app = MetricsMiddleware(_app(anyio.Event()), metrics)

    await _call(app, "/items/a")
    await _call(app, "/items/b")
    await _call(app, "/nowhere")

    text = metrics.exposition().decode()
    assert sample(text, "tether_http_requests_total", route="/items/{item_id}", status="200") == 2
    assert sample(text, "tether_http_requests_total", route="<unmatched>", status="404") == 1
    assert sample(text, "tether_http_request_duration_seconds_count", route="/items/{item_id}") == 2


@pytest.mark.anyio
async def test_middleware_passes_event_streams_through_unbuffered_and_counts_subscribers() -> None:
    metrics = Metrics(process_metrics=False)
    release = anyio.Event()
    app = MetricsMiddleware(_app(release), metrics)
    gauge_while_open: list[float] = []

    async def on_message(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and b"first" in message.get("body", b""):
            # The first frame reached the client while the stream is still open.
            gauge_while_open.append(sample(metrics.exposition().decode(), "tether_sse_subscribers"))
            release.set()

    with anyio.fail_after(5):
        sent = await _call(app, "/stream", on_message)

    assert gauge_while_open == [1.0]
    assert any(b"last" in m.get("body", b"") for m in sent)
    text = metrics.exposition().decode()
    assert sample(text, "tether_sse_subscribers") == 0
    assert sample(text, "tether_http_requests_total", route="/stream", status="200") == 1


def _event(seq: int, kind: str, **body: Any) -> StoredEvent:
    return StoredEvent("sesn_x", seq, f"sevt_{seq}", kind, {"id": f"sevt_{seq}", "type": kind, **body})


def test_log_events_drive_running_sessions_retries_and_tokens() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.observe_events("sesn_a", [_event(1, "user.message"), _event(2, "session.status_running")])
    metrics.observe_events("sesn_b", [_event(1, "session.status_running")])
    metrics.observe_events(
        "sesn_a",
        [
            _event(3, "span.model_request_end", is_error=True, model_usage={}),
            _event(
                4,
                "session.error",
                error={"type": "model_overloaded_error", "retry_status": {"type": "retrying"}},
            ),
            _event(
                5,
                "span.model_request_end",
                is_error=False,
                model_usage={"input_tokens": 7, "output_tokens": 3},
            ),
            _event(6, "session.status_idle", stop_reason={"type": "end_turn"}),
        ],
    )

    text = metrics.exposition().decode()
    assert sample(text, "tether_sessions_running") == 1
    assert sample(text, "tether_model_retries_total", error_type="model_overloaded_error") == 1
    assert sample(text, "tether_model_tokens_total", kind="input") == 7
    assert sample(text, "tether_model_tokens_total", kind="output") == 3
    assert sample(text, "tether_session_events_total", type="session.status_running") == 2

    with metrics.tunnel_connection(), metrics.tunnel_connection():
        assert sample(metrics.exposition().decode(), "tether_tunnel_connections") == 2
    assert sample(metrics.exposition().decode(), "tether_tunnel_connections") == 0


# A real gateway ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    with observability_gateway(tmp_path_factory.mktemp("metrics"), model_server.url, api_key) as server:
        yield server


@pytest.fixture
def obs_client(observed: ServerProcess, api_key: str) -> Iterator[anthropic.Anthropic]:
    with sdk(observed, api_key) as client:
        yield client


def scrape(server: ServerProcess, api_key: str) -> str:
    response = httpx2.get(server.url + "/metrics", headers={"x-api-key": api_key})
    response.raise_for_status()
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_metrics_need_the_api_key(observed: ServerProcess) -> None:
    assert httpx2.get(observed.url + "/metrics").status_code == 401
    assert httpx2.get(observed.url + "/metrics", headers={"x-api-key": "wrong"}).status_code == 401


def test_a_session_shows_up_in_requests_retries_tool_errors_and_tokens(
    obs_client: anthropic.Anthropic, scripts: Scripts, observed: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    marker = scripts.add(
        [
            {
                "fail_first": [{"status": 529, "type": "overloaded_error", "message": "busy"}],
                "content": [{"type": "tool_use", "name": "read", "input": {"file_path": "missing.txt"}}],
            },
            {"content": [{"type": "text", "text": "no such file"}]},
        ]
    )
    before = scrape(observed, api_key)
    environment = obs_client.beta.environments.create(name="metrics-env")
    session = obs_client.beta.sessions.create(
        agent=toolset_agent(obs_client, marker).id, environment_id=environment.id
    )

    streamed = send_and_stream(obs_client, session.id, [user_message("read it")])

    assert streamed[-1].type == "session.status_idle"
    after = scrape(observed, api_key)

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    route = "/v1/sessions/{session_id}/events"
    assert delta("tether_http_requests_total", method="POST", route=route, status="200") == 1
    assert delta("tether_http_requests_total", method="POST", route="/v1/sessions", status="200") == 1
    assert delta("tether_model_retries_total", error_type="model_overloaded_error") == 1
    assert delta("tether_tool_errors_total", kind="agent") == 1
    assert delta("tether_tool_calls_total", kind="agent") == 1
    assert delta("tether_model_tokens_total", kind="output") > 0
    assert delta("tether_model_call_duration_seconds_count", outcome="error") == 1
    assert sample(after, "tether_sessions_running") == 0
    # The stream closed with the turn: no subscriber left behind.
    wait_until(
        lambda: sample(scrape(observed, api_key), "tether_sse_subscribers") == 0, what="stream to close"
    )


def test_open_event_streams_are_counted_while_they_last(
    obs_client: anthropic.Anthropic, scripts: Scripts, observed: ServerProcess, api_key: str
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "hello"}]}])
    environment = obs_client.beta.environments.create(name="sse-env")
    session = obs_client.beta.sessions.create(
        agent=toolset_agent(obs_client, marker).id, environment_id=environment.id
    )
    opened = threading.Event()
    stop = threading.Event()

    def hold_stream() -> None:
        with obs_client.beta.sessions.events.stream(session.id):
            opened.set()
            stop.wait(15)

    holder = threading.Thread(target=hold_stream)
    holder.start()
    try:
        assert opened.wait(10)
        wait_until(
            lambda: sample(scrape(observed, api_key), "tether_sse_subscribers") >= 1, what="subscriber"
        )
        text = scrape(observed, api_key)
        assert (
            sample(
                text,
                "tether_http_request_duration_seconds_count",
                route="/v1/sessions/{session_id}/events/stream",
            )
            >= 1
        )
    finally:
        stop.set()
        holder.join(10)
    wait_until(lambda: sample(scrape(observed, api_key), "tether_sse_subscribers") == 0, what="unsubscribe")
