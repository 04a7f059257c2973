"""Prometheus metrics: what an operator graphs and alerts on.

Everything is per process, like any Prometheus target: with several gateway replicas,
sum across them. Three sources feed the figures, so the harness needs almost no hooks:

* ``MetricsMiddleware`` (pure ASGI, never buffers a body) counts requests by route
  template and status, times them, and counts open event streams;
* ``observe_events`` sees every batch this process appends to a session log (wire it
  with ``observed_store.observe_store``) and derives running sessions, model retries,
  tokens and event counts from the events themselves;
* the span helpers in ``tracing`` count tool errors and time model and tool calls.

``/metrics`` sits behind the API key like every other route; ``TETHER_METRICS_PUBLIC=1``
makes it public (see ``public_paths``) for scrapers that cannot send a header.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.sessionlog.events import ADMIN_LOG
from gateway.store.base import SESSION_STATUS_OF_EVENT, StoredEvent

METRICS_PATH = "/metrics"
UNMATCHED = "<unmatched>"
"""Route label for requests no route matched: keeps label cardinality bounded."""
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CALL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# The ``*_created`` companion series double the exposition for no use on a dashboard.
disable_created_metrics()

TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
USAGE_OF = {"span.model_request_end": "model_usage", "span.outcome_evaluation_end": "usage"}
"""Events that carry model usage (the agent's calls, an evaluation's grader calls), and where."""


class Metrics:
    """One registry and its metrics. The gateway uses the process-wide ``METRICS``; tests
    may build their own to read values without interference."""

    def __init__(self, registry: CollectorRegistry | None = None, process_metrics: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        r = self.registry
        self.http_requests = Counter(
            "tether_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "tether_http_request_duration_seconds",
            "Time to the end of the response; for event streams, time to the response headers.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sse_subscribers = Gauge(
            "tether_sse_subscribers", "Open Server-Sent Events responses (session event streams).", registry=r
        )
        self.sessions_running = Gauge(
            "tether_sessions_running",
            "Sessions whose last status event appended by this process is session.status_running.",
            registry=r,
        )
        self.session_events = Counter(
            "tether_session_events", "Events appended to session logs by this process.", ["type"], registry=r
        )
        self.model_retries = Counter(
            "tether_model_retries",
            "Failed model calls the harness will retry (session.error with retry_status retrying).",
            ["error_type"],
            registry=r,
        )
        self.model_tokens = Counter(
            "tether_model_tokens", "Tokens reported by completed model calls.", ["kind"], registry=r
        )
        self.model_call_duration = Histogram(
            "tether_model_call_duration_seconds",
            "One model call attempt, by outcome.",
            ["outcome"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.tool_calls = Counter(
            "tether_tool_calls", "Tool calls the harness executed, by tool kind.", ["kind"], registry=r
        )
        self.tool_errors = Counter(
            "tether_tool_errors",
            "Executed tool calls that returned an error result or raised, by tool kind.",
            ["kind"],
            registry=r,
        )
        self.tool_call_duration = Histogram(
            "tether_tool_call_duration_seconds",
            "One executed tool call, by tool kind.",
            ["kind"],
            buckets=CALL_BUCKETS,
            registry=r,
        )
        self.tunnel_connections = Gauge(
            "tether_tunnel_connections",
            "Tunnel agent WebSocket connections open to this process.",
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "tether_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, failed, dropped).",
            ["outcome"],
            registry=r,
        )
        self._running: set[str] = set()

    # Session log ---------------------------------------------------------------------------

    def observe_events(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        """An ``EventObserver``: called after each batch this process appended is committed."""
        if session_id == ADMIN_LOG:
            return  # administration, not session traffic
        for event in events:
            self.session_events.labels(event.type).inc()
            status = SESSION_STATUS_OF_EVENT.get(event.type)
            if status == "running":
                self._running.add(session_id)
            elif status is not None:
                self._running.discard(session_id)
            elif event.type == "session.error":
                error = event.body.get("error") or {}
                if (error.get("retry_status") or {}).get("type") == "retrying":
                    self.model_retries.labels(str(error.get("type", "unknown"))).inc()
            elif event.type in USAGE_OF:
                usage = event.body.get(USAGE_OF[event.type]) or {}
                for kind in TOKEN_FIELDS:
                    amount = usage.get(kind) or 0
                    if amount:
                        self.model_tokens.labels(kind.removesuffix("_tokens")).inc(amount)
        self.sessions_running.set(len(self._running))

    def running_sessions(self) -> set[str]:
        return set(self._running)

    def forget_sessions(self, session_ids: Iterable[str]) -> None:
        """Drop sessions that stopped running without a status event this process saw
        (deleted mid-turn, or taken over by another replica)."""
        self._running.difference_update(session_ids)
        self.sessions_running.set(len(self._running))

    # Tunnels -------------------------------------------------------------------------------

    def set_tunnel_connections(self, count: int) -> None:
        self.tunnel_connections.set(count)

    @contextmanager
    def tunnel_connection(self) -> Iterator[None]:
        """Wrap one tunnel WebSocket's lifetime: the gauge counts it while open."""
        self.tunnel_connections.inc()
        try:
            yield
        finally:
            self.tunnel_connections.dec()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


METRICS = Metrics()
"""The process-wide metrics the gateway exports."""


def set_tunnel_connections(count: int) -> None:
    """For the tunnel hub: the number of tunnel agent connections currently open."""
    METRICS.set_tunnel_connections(count)


def tunnel_connection() -> AbstractContextManager[None]:
    """For the tunnel hub, around one connection: ``with tunnel_connection(): ...``."""
    return METRICS.tunnel_connection()


def observe_events(session_id: str, events: Sequence[StoredEvent]) -> None:
    METRICS.observe_events(session_id, events)


def public_paths() -> tuple[str, ...]:
    """Paths to add to ``APIKeyMiddleware(public_paths=...)``: ``/metrics`` only when the
    operator opted in with ``TETHER_METRICS_PUBLIC=1`` (it reveals traffic, not data)."""
    flag = os.environ.get("TETHER_METRICS_PUBLIC", "").strip().lower()
    return (METRICS_PATH,) if flag in ("1", "true", "yes") else ()


# HTTP --------------------------------------------------------------------------------------


class MetricsMiddleware:
    """Counts and times every HTTP request without touching its body, so event streams flow
    through unbuffered. Install it outermost (before authentication) so 401s are counted.

    ``routes`` resolves the template of requests the router never saw (refused by the
    authentication middleware); without it they are labelled ``<unmatched>``.
    """

    def __init__(
        self, app: ASGIApp, metrics: Metrics | None = None, routes: Sequence[BaseRoute] = ()
    ) -> None:
        self.app = app
        self.metrics = metrics or METRICS
        self.routes = list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "OTHER"
        started = time.perf_counter()
        status = 500
        streaming = False

        async def observe_send(message: Message) -> None:
            nonlocal status, streaming
            if message["type"] == "http.response.start":
                status = message["status"]
                if _is_event_stream(message):
                    streaming = True
                    metrics.sse_subscribers.inc()
                    metrics.http_latency.labels(method, self._route(scope)).observe(
                        time.perf_counter() - started
                    )
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            route = self._route(scope)
            if streaming:
                metrics.sse_subscribers.dec()
            else:
                metrics.http_latency.labels(method, route).observe(time.perf_counter() - started)
            metrics.http_requests.labels(method, route, str(status)).inc()

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None:
            for candidate in self.routes:
                match, _ = candidate.matches(scope)
                if match is not Match.NONE:
                    route = candidate
                    break
        path = getattr(route, "path", None)
        return path if isinstance(path, str) and path else UNMATCHED


def _is_event_stream(message: Message) -> bool:
    for name, value in message.get("headers", ()):
        if name.lower() == b"content-type":
            return bool(value.lower().startswith(b"text/event-stream"))
    return False


async def metrics_endpoint(request: Request) -> Response:
    """``GET /metrics``: the Prometheus text format. Before answering, sessions counted as
    running are checked against the store, so a session deleted or taken over mid-turn does
    not stay in the gauge forever."""
    gateway = getattr(request.app.state, "gateway", None)
    running = METRICS.running_sessions()
    if gateway is not None and running:
        stale = []
        for session_id in running:
            session = await gateway.store.get("session", session_id)
            if session is None or session.get("status") != "running":
                stale.append(session_id)
        METRICS.forget_sessions(stale)
    return Response(METRICS.exposition(), media_type=CONTENT_TYPE_LATEST)
