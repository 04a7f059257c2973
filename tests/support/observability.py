"""Helpers for the observability, trail page, webhook and operator CLI tests: a gateway
process with those pieces wired in, loopback receivers for OTLP traces and webhooks, and
bounded waits on conditions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import anthropic

from tests.support.processes import ServerProcess, running_server

T = TypeVar("T")


def wait_until(condition: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Re-check ``condition`` until it returns something truthy; fail after ``timeout``.
    For state only observable by asking (a scrape, a query); events use ``Receiver.wait``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@contextmanager
def observability_gateway(
    data_dir: Path, model_url: str, api_key: str, env: dict[str, str] | None = None
) -> Iterator[ServerProcess]:
    base = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_MODEL_MAX_ATTEMPTS": "3",
        "TETHER_MODEL_RETRY_BASE_SECONDS": "0.01",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
        "TETHER_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "TETHER_WEBHOOK_RETRY_MAX_SECONDS": "1",
        "TETHER_WEBHOOK_MAX_ATTEMPTS": "4",
    }
    with running_server(
        ["gateway", "--port", "0", "--data-dir", str(data_dir)], {**base, **(env or {})}
    ) as server:
        server.data_dir = data_dir  # type: ignore[attr-defined]
        yield server


def sdk(server: ServerProcess, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=30)


def toolset_agent(client: anthropic.Anthropic, marker: str, name: str = "observed") -> Any:
    return client.beta.agents.create(
        name=name, model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )


# Loopback HTTP receivers ---------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    """What the receiver answered."""


@dataclass
class Receiver:
    """A threaded HTTP server on 127.0.0.1 recording every POST. ``responses`` is a queue
    of statuses to answer with (then 200), e.g. ``[500, 503]`` to fail twice."""

    responses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def wait(self, condition: Callable[[list[Received]], T | None], timeout: float = 15.0) -> T:
        """Block until ``condition(requests)`` is truthy (re-checked on every request)."""
        with self._changed:
            result = self._changed.wait_for(lambda: condition(list(self.requests)), timeout)
        if not result:
            raise AssertionError(f"timed out after {timeout}s; received {len(self.requests)} requests")
        return result

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> int:
        with self._changed:
            status = self.responses.pop(0) if self.responses else 200
            self.requests.append(Received(path, headers, body, status))
            self._changed.notify_all()
            return status


@contextmanager
def receiving(responses: list[int] | None = None) -> Iterator[Receiver]:
    receiver = Receiver(responses=list(responses or []))

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            status = receiver._record(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def otlp_spans(requests: list[Received]) -> list[dict[str, Any]]:
    """Decode OTLP/HTTP protobuf trace exports into flat span dicts."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans: list[dict[str, Any]] = []
    for request in requests:
        if request.path != "/v1/traces":
            continue
        export = ExportTraceServiceRequest.FromString(request.body)
        for resource in export.resource_spans:
            service = {a.key: _value(a.value) for a in resource.resource.attributes}.get("service.name")
            for scope in resource.scope_spans:
                for span in scope.spans:
                    spans.append(
                        {
                            "name": span.name,
                            "service": service,
                            "scope": scope.scope.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_id": span.parent_span_id.hex(),
                            "status": span.status.code,
                            "attributes": {a.key: _value(a.value) for a in span.attributes},
                        }
                    )
    return spans


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None
