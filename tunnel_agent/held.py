"""One work item the worker holds: its local sandbox, its tunnel route, its lease.

The lease ends when

- a heartbeat reports ``stopping``/``stopped`` (the session was archived or deleted): the
  worker stops the sandbox and then confirms with a forced stop;
- a heartbeat meets 412, or none has succeeded for a whole TTL: another worker (or the
  queue) owns the item, so it is left alone;
- a heartbeat is refused for good (the item is gone);
- the agent shuts down: the item is left to lapse, so the next worker (or this agent after a
  restart) reclaims it and the session keeps its on-prem workspace.

In every case the route is dropped before the sandbox is stopped, so no new tunnel stream
reaches a sandbox on its way out.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

import anthropic
import anyio
import anyio.abc

from tunnel_agent import work_contract
from tunnel_agent.sandboxes import LocalSandbox, SandboxStartFailed

if TYPE_CHECKING:
    from tunnel_agent.worker import Worker

log = logging.getLogger("tether.tunnel.worker")

NO_HEARTBEAT = "NO_HEARTBEAT"
_RETRYABLE_STATUS = frozenset({408, 409, 429})


class LeaseEnd(enum.Enum):
    STOPPED = "stopped"
    """The gateway asked for a stop: confirm it once the sandbox is gone."""
    LOST = "lost"
    """Another worker or the queue owns the item: never stop it."""
    REJECTED = "rejected"
    """A heartbeat was refused for good (the item or environment is gone)."""
    RELEASED = "released"
    """The agent is shutting down: the lease lapses and another worker reclaims the item."""


class HeldSession:
    """Served by ``run``: a heartbeat loop and a sandbox supervisor, two tasks on one event
    loop that touch disjoint state, so no locks are needed."""

    def __init__(self, worker: Worker, work_id: str, session_id: str) -> None:
        self.worker = worker
        self.settings = worker.settings
        self.work_id = work_id
        self.session_id = session_id
        self.route = work_contract.route_name(work_id)
        self.url = work_contract.sandbox_url(self.route, self.settings.tunnel_domain)
        self.sandbox: LocalSandbox | None = None
        self._desired: dict[str, str | None] | None = None
        self._reported: dict[str, str | None] | None = None
        self._expected = NO_HEARTBEAT
        """The server's last heartbeat, echoed back: the fence against a second holder."""
        self._ttl = float(self.settings.lease_ttl)
        self._last_success = anyio.current_time()

    async def run(self) -> LeaseEnd:
        """Serve the item until its lease ends; the sandbox and route are gone on return."""
        log.info("work %s: serving session %s at %s", self.work_id, self.session_id, self.url)
        end = LeaseEnd.RELEASED
        async with anyio.create_task_group() as tasks:
            try:
                end = await self._keep_lease(tasks)
            finally:
                tasks.cancel_scope.cancel()  # the supervisor first, so nothing restarts a sandbox
                with anyio.CancelScope(shield=True):
                    await self._close()
        return end

    async def _keep_lease(self, tasks: anyio.abc.TaskGroup) -> LeaseEnd:
        """The first heartbeat claims the lease before a sandbox is spent on it; from then on
        heartbeats run beside the sandbox's supervisor, so a slow start never lapses the lease."""
        end = await self._heartbeat()
        if end is not None:
            return end
        tasks.start_soon(self._supervise, tasks, name=f"sandbox for {self.session_id}")
        while True:
            await anyio.sleep(self.settings.heartbeat_interval)
            end = await self._heartbeat()
            if end is not None:
                return end

    async def _supervise(self, tasks: anyio.abc.TaskGroup) -> None:
        """Keep the sandbox running (a crashed one is restarted at the next tick) and its
        URL, or why it cannot start, recorded on the item."""
        while True:
            await self._ensure_sandbox(tasks)
            await self._report()
            await anyio.sleep(self.settings.heartbeat_interval)

    async def _heartbeat(self) -> LeaseEnd | None:
        """One conditional heartbeat; the way the lease ended, or None while it holds."""
        try:
            with anyio.fail_after(max(self.settings.heartbeat_interval, 5.0)):
                lease = await self.worker.client.beta.environments.work.heartbeat(
                    self.work_id,
                    environment_id=self.settings.environment_id,
                    expected_last_heartbeat=self._expected,
                    desired_ttl_seconds=self.settings.lease_ttl,
                )
        except anthropic.PreconditionFailedError:
            log.warning("work %s: lease lost (another worker holds it); stopping its sandbox", self.work_id)
            return LeaseEnd.LOST
        except anthropic.APIStatusError as exc:
            if exc.status_code < 500 and exc.status_code not in _RETRYABLE_STATUS:
                log.error("work %s: heartbeat refused (HTTP %d)", self.work_id, exc.status_code)
                return LeaseEnd.REJECTED
            return self._lapsed(f"HTTP {exc.status_code}")
        except (anthropic.APIError, TimeoutError) as exc:
            return self._lapsed(type(exc).__name__)
        self._expected = lease.last_heartbeat or NO_HEARTBEAT
        self._last_success = anyio.current_time()
        self._ttl = float(lease.ttl_seconds or self._ttl)
        if lease.state in ("stopping", "stopped") or not lease.lease_extended:
            log.info("work %s: %s; stopping its sandbox", self.work_id, lease.state)
            return LeaseEnd.STOPPED
        return None

    def _lapsed(self, reason: str) -> LeaseEnd | None:
        """A heartbeat failed for a reason retrying may fix. Past a whole TTL without one the
        lease must be assumed gone: two workers must never serve one session."""
        if anyio.current_time() - self._last_success > self._ttl:
            log.error(
                "work %s: no heartbeat for %.0fs (%s); lease assumed lost", self.work_id, self._ttl, reason
            )
            return LeaseEnd.LOST
        log.warning("work %s: heartbeat failed (%s); retrying", self.work_id, reason)
        return None

    async def _ensure_sandbox(self, tasks: anyio.abc.TaskGroup) -> None:
        """Start the sandbox, or restart it if it died; the outcome (its URL, or why it did not
        start) becomes the metadata ``_report`` writes on the item."""
        metrics = self.worker.metrics
        restarting = self.sandbox is not None
        if self.sandbox is not None:
            if self.sandbox.alive:
                return
            log.warning(
                "work %s: sandbox exited with status %s; restarting it",
                self.work_id,
                self.sandbox.process.returncode,
            )
            self.worker.routes.remove(self.route)
            await self.sandbox.stop()
            self.sandbox = None
            self.worker.count_sandboxes()
        try:
            self.sandbox = await LocalSandbox.start(
                self.settings.workspaces / self.session_id,
                self.settings.sandbox_args,
                tasks,
                self.settings.sandbox_start_timeout,
            )
        except (SandboxStartFailed, OSError) as exc:
            metrics.sandbox_starts.inc(outcome="failed")
            log.error("work %s: %s", self.work_id, exc)
            self._desired = {work_contract.SANDBOX_URL: None, work_contract.SANDBOX_ERROR: str(exc)}
            return
        self.worker.routes.set_loopback(self.route, self.sandbox.port, self.sandbox.headers)
        self.worker.count_sandboxes()
        metrics.sandbox_starts.inc(outcome="restarted" if restarting else "started")
        self._desired = {
            work_contract.SANDBOX_URL: self.url,
            work_contract.SANDBOX_ERROR: None,
            work_contract.WORKER_ID: self.settings.worker_id,
        }

    async def _report(self) -> None:
        """Write the item's metadata when it changed; a failure is retried at the next tick."""
        if self._desired is None or self._desired == self._reported:
            return
        try:
            await self.worker.client.beta.environments.work.update(
                self.work_id, environment_id=self.settings.environment_id, metadata=self._desired
            )
        except anthropic.APIError as exc:
            log.warning("work %s: recording the sandbox in its metadata failed: %s", self.work_id, exc)
            return
        self._reported = self._desired

    async def _close(self) -> None:
        self.worker.routes.remove(self.route)
        if self.sandbox is not None:
            await self.sandbox.stop()
            log.info("work %s: sandbox for %s stopped", self.work_id, self.session_id)
            self.sandbox = None
            self.worker.count_sandboxes()
