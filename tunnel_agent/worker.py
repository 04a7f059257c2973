"""Worker mode: the tunnel agent drains its self-hosted environment's work queue.

A session created in a ``self_hosted`` environment is queued as a work item. Its agent
toolset must run on-prem, next to the data, so the agent that already holds the outbound
tunnel also takes the work: for each item it

1. acknowledges it (the lease is now this worker's),
2. starts a local sandbox for ``<workspaces>/<session id>`` on a loopback port,
3. exposes that port as the dynamic tunnel route ``sbx-...`` and records
   ``sandbox_url = http://sbx-....<tunnel domain>/mcp`` in the item's metadata,
4. heartbeats the lease with ``expected_last_heartbeat`` (which fences out any other
   worker), restarting a crashed sandbox before each heartbeat.

The gateway sends the session's toolset calls to ``sandbox_url`` once the item is ``active``;
they cross the tunnel like any on-prem MCP call, so files and commands never leave the site.
The per-item lifecycle lives in ``tunnel_agent.held``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anthropic
import anyio
from anthropic.types.beta.environments import BetaSelfHostedWork

from tunnel_agent.backoff import Backoff
from tunnel_agent.held import HeldSession, LeaseEnd
from tunnel_agent.metrics import AgentMetrics
from tunnel_agent.routes import DynamicRoutes

log = logging.getLogger("tether.tunnel.worker")

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
"""Session ids become directory names: anything else (``..``, slashes) is refused."""
TUNNEL_WAIT = 0.2
"""How often an idle worker re-checks whether the tunnel is up before taking work."""


@dataclass(frozen=True)
class WorkerSettings:
    environment_id: str
    worker_id: str
    """Sent as ``Anthropic-Worker-ID`` on polls and recorded on held items: the agent id."""
    tunnel_domain: str
    workspaces: Path
    sandbox_args: tuple[str, ...] = ()
    lease_ttl: int = 30
    heartbeat_interval: float = 10.0
    poll_block_ms: int = 999
    max_sessions: int = 8
    sandbox_start_timeout: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        client: anthropic.AsyncAnthropic,
        routes: DynamicRoutes,
        metrics: AgentMetrics,
        tunnel_up: Callable[[], bool] = lambda: True,
    ) -> None:
        """``tunnel_up``: work is only taken while a tunnel connection is up, since a session
        held by a worker the gateway cannot reach would wait for nothing."""
        self.settings = settings
        self.client = client
        self.routes = routes
        self.metrics = metrics
        self.tunnel_up = tunnel_up
        self.held: dict[str, HeldSession] = {}
        """Work id -> the session being served."""
        self._scope: anyio.CancelScope | None = None
        self._finished = anyio.Event()

    async def close(self) -> None:
        """Stop taking work, drop every sandbox route and stop every sandbox; the held items
        are left to lapse, so the next worker reclaims them (see ``tunnel_agent.held``)."""
        if self._scope is None:
            return
        self._scope.cancel()
        await self._finished.wait()

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self._finished.set()

    async def _run(self) -> None:
        slots = anyio.Semaphore(self.settings.max_sessions)
        backoff = Backoff(self.settings.backoff_base, self.settings.backoff_cap)
        log.info(
            "worker %s: taking work for %s (up to %d sessions; sandboxes under %s)",
            self.settings.worker_id,
            self.settings.environment_id,
            self.settings.max_sessions,
            self.settings.workspaces,
        )
        async with anyio.create_task_group() as tasks:
            self._scope = tasks.cancel_scope
            while True:
                if not self.tunnel_up():
                    await anyio.sleep(TUNNEL_WAIT)
                    continue
                await slots.acquire()
                try:
                    item = await self._poll()
                except anthropic.APIError as exc:
                    slots.release()
                    delay = backoff.next_delay()
                    log.warning("polling for work failed (%s); retrying in %.2fs", _describe(exc), delay)
                    await anyio.sleep(delay)
                    continue
                backoff.attempt = 0
                if item is None or not self._acceptable(item):
                    slots.release()
                    continue
                tasks.start_soon(self._serve, item, slots, name=f"work {item.id}")

    def count_sandboxes(self) -> None:
        running = sum(1 for held in self.held.values() if held.sandbox is not None)
        self.metrics.sandboxes.set(running)

    async def _poll(self) -> BetaSelfHostedWork | None:
        return await self.client.beta.environments.work.poll(
            self.settings.environment_id,
            block_ms=self.settings.poll_block_ms,
            anthropic_worker_id=self.settings.worker_id,
        )

    def _acceptable(self, item: BetaSelfHostedWork) -> bool:
        if item.data.type != "session" or not _SESSION_ID.match(item.data.id):
            log.warning("work %s: not a session this worker can serve (%r); skipped", item.id, item.data)
            return False
        if item.id in self.held:
            return False
        return True

    async def _serve(self, item: BetaSelfHostedWork, slots: anyio.Semaphore) -> None:
        work = self.client.beta.environments.work
        try:
            try:
                await work.ack(item.id, environment_id=self.settings.environment_id)
            except anthropic.APIError as exc:
                # Taken or stopped meanwhile, or the gateway is unreachable: either way the item
                # returns to the queue after its reclaim window.
                log.info("work %s: not acknowledged (%s)", item.id, _describe(exc))
                return
            held = HeldSession(self, item.id, item.data.id)
            self.held[item.id] = held
            end = LeaseEnd.RELEASED
            try:
                end = await held.run()
            except Exception:
                # One session's failure must not take down the tunnel or the other sessions;
                # its sandbox is already stopped and the lease is left to lapse.
                log.exception("work %s: serving it failed", item.id)
            finally:
                self.held.pop(item.id, None)
                self.metrics.leases_ended.inc(end=end.value)
            if end is LeaseEnd.STOPPED:
                await self._confirm_stop(item.id)
        finally:
            slots.release()

    async def _confirm_stop(self, work_id: str) -> None:
        """The gateway asked for a stop and the sandbox is gone: say so (``stopping`` -> ``stopped``;
        an item already ``stopped`` is returned unchanged)."""
        try:
            await self.client.beta.environments.work.stop(
                work_id, environment_id=self.settings.environment_id, force=True
            )
        except anthropic.APIError as exc:
            log.warning("work %s: confirming the stop failed: %s", work_id, _describe(exc))


def _describe(exc: anthropic.APIError) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        return f"HTTP {exc.status_code}"
    return type(exc).__name__
