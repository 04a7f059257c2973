"""Deliver session status changes and outcome verdicts to registered webhook endpoints, off the harness's path.

``publish`` (or ``observe``, the store-observer form) only puts the event on a bounded
in-memory queue and returns: the harness never waits on a receiver. ``run`` is the worker
(start it in the gateway's lifespan task group): for each event it looks up the
subscribed endpoints and delivers to each in its own task, so one slow receiver delays no
other. A failed attempt (non-2xx, timeout, connection error) is retried with exponential
backoff and jitter, up to ``max_attempts``; ``410 Gone`` stops at once, and so does a
target that ``targets`` refuses (it resolves to an internal address now: see ``targets``).

Delivery is at least once while the process lives (receivers dedupe on ``webhook-id``);
events still queued or waiting for a retry when the process stops are not delivered.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import anyio
import httpx2

from gateway import settings
from gateway.config import webhook_allowed_hosts
from gateway.observability.metrics import METRICS, Metrics
from gateway.store.base import Body, Store, StoredEvent
from gateway.webhooks import endpoints
from gateway.webhooks.endpoints import EVENT_TYPES
from gateway.webhooks.signing import signed_headers
from gateway.webhooks.targets import PinnedTransport, RefusedConnect, WebhookTargets

DELIVERED = frozenset(EVENT_TYPES)
"""Status changes and outcome verdicts: what endpoints can subscribe to."""

log = logging.getLogger("tether.webhooks")

USER_AGENT = "tether-webhooks/1"
RECENT_RESULTS = 200


@dataclass(frozen=True)
class DeliveryResult:
    endpoint_id: str
    message_id: str
    event_type: str
    attempts: int
    delivered: bool
    last_status: int | None
    """HTTP status of the last attempt; None when it never got a response."""
    last_error: str | None = None


class _Attempt(NamedTuple):
    status: int | None
    error: str | None = None
    retry_after: float | None = None
    final: bool = False
    """Not worth retrying (the target is refused)."""


def payload(session_id: str, event: Body) -> bytes:
    """The delivered body: Standard Webhooks' ``{type, timestamp, data}`` envelope around
    the session event exactly as the log holds it."""
    envelope = {
        "type": event["type"],
        "timestamp": event.get("processed_at"),
        "data": {"session_id": session_id, "event": event},
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


class WebhookDispatcher:
    def __init__(
        self,
        store: Store,
        *,
        max_attempts: int = 6,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 10.0,
        queue_size: int = 10_000,
        concurrency: int = 32,
        metrics: Metrics | None = None,
        targets: WebhookTargets | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        on_result: Callable[[DeliveryResult], None] | None = None,
    ) -> None:
        self.store = store
        self.max_attempts = max(1, max_attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = timeout
        self.metrics = metrics or METRICS
        self.results: deque[DeliveryResult] = deque(maxlen=RECENT_RESULTS)
        """The latest finished deliveries, newest last (for tests and debugging)."""
        self._on_result = on_result
        """Called with each finished delivery (delivered or given up)."""
        self.targets = targets or WebhookTargets()
        """Where deliveries may go; checked again on every attempt, on the address connected to."""
        self._sleep = sleep
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, Body]](queue_size)

    @classmethod
    def from_env(cls, store: Store, **overrides: Any) -> WebhookDispatcher:
        """Settings from ``TETHER_WEBHOOK_MAX_ATTEMPTS`` (6), ``TETHER_WEBHOOK_RETRY_BASE_SECONDS``
        (1), ``TETHER_WEBHOOK_RETRY_MAX_SECONDS`` (300), ``TETHER_WEBHOOK_TIMEOUT_SECONDS`` (10) and
        ``TETHER_WEBHOOK_ALLOWED_HOSTS`` (none; an invalid entry is a ``ValueError``)."""
        env = os.environ
        options: dict[str, Any] = {
            "max_attempts": settings.WEBHOOK_MAX_ATTEMPTS.read(env),
            "base_delay": settings.WEBHOOK_RETRY_BASE.read(env),
            "max_delay": settings.WEBHOOK_RETRY_MAX.read(env),
            "timeout": settings.WEBHOOK_TIMEOUT.read(env),
            "targets": WebhookTargets.from_entries(webhook_allowed_hosts(env)),
        }
        return cls(store, **{**options, **overrides})

    def _client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            transport=PinnedTransport(self.targets),
            timeout=self.timeout,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
        )

    # Producer side: called from the harness's task, must never block ---------------------------

    def publish(self, session_id: str, event: Body) -> None:
        """Queue a deliverable event (``DELIVERED``) for delivery; drops it (logged, counted) if
        the queue is full."""
        if event.get("type") not in DELIVERED:
            return
        try:
            self._send.send_nowait((session_id, event))
        except anyio.WouldBlock:
            self.metrics.webhook_deliveries.labels("dropped").inc()
            log.warning("webhook queue full; dropped %s for %s", event.get("type"), session_id)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("webhook dispatcher stopped; not delivering %s", event.get("id"))

    def observe(self, session_id: str, events: Sequence[StoredEvent]) -> None:
        """An ``EventObserver`` (see ``observability.observed_store``)."""
        for event in events:
            if event.type in DELIVERED:
                self.publish(session_id, event.body)

    # Worker ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled. Run exactly one per dispatcher."""
        async with self._client() as client, anyio.create_task_group() as deliveries:
            async with self._receive:
                async for session_id, event in self._receive:
                    try:
                        targets = await endpoints.subscribed_to(self.store, event["type"])
                    except Exception:
                        log.exception("could not load webhook endpoints; dropping %s", event.get("id"))
                        self.metrics.webhook_deliveries.labels("dropped").inc()
                        continue
                    if not targets:
                        continue
                    body = payload(session_id, event)
                    for target in targets:
                        deliveries.start_soon(self._deliver, client, target, event, body)

    async def _deliver(self, client: httpx2.AsyncClient, target: Body, event: Body, body: bytes) -> None:
        outcome = _Attempt(None)
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            async with self._limiter:
                outcome = await self._attempt(client, target, event["id"], body)
            if outcome.status is not None and 200 <= outcome.status < 300:
                self.metrics.webhook_deliveries.labels("delivered").inc()
                self._finish(target, event, attempt, True, outcome.status, None)
                return
            if outcome.status == 410 or outcome.final or attempt >= self.max_attempts:
                break
            self.metrics.webhook_deliveries.labels("retry").inc()
            await self._sleep(self._delay(attempt, outcome.retry_after))
        self.metrics.webhook_deliveries.labels("failed").inc()
        log.warning(
            "webhook %s to %s failed after %d attempts (last: %s)",
            event["id"],
            target["url"],
            attempt,
            outcome.error or f"HTTP {outcome.status}",
        )
        self._finish(target, event, attempt, False, outcome.status, outcome.error)

    async def _attempt(
        self, client: httpx2.AsyncClient, target: Body, message_id: str, body: bytes
    ) -> _Attempt:
        # Signed per attempt: a retry carries a fresh timestamp, so it passes the receiver's
        # replay window however long the backoff was.
        headers = {"content-type": "application/json", **signed_headers(target["secret"], message_id, body)}
        try:
            response = await client.post(target["url"], content=body, headers=headers)
        except RefusedConnect as exc:
            return _Attempt(None, f"target refused: {exc}", final=True)
        except httpx2.HTTPError as exc:
            return _Attempt(None, f"{type(exc).__name__}: {exc}")
        return _Attempt(response.status_code, None, _retry_after(response.headers.get("retry-after")))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with equal jitter; a receiver's Retry-After wins if longer."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_delay))
        return delay

    def _finish(
        self, target: Body, event: Body, attempts: int, ok: bool, status: int | None, error: str | None
    ) -> None:
        result = DeliveryResult(target["id"], event["id"], event["type"], attempts, ok, status, error)
        self.results.append(result)
        if self._on_result is not None:
            self._on_result(result)


def _retry_after(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None
