"""Assemble the gateway: store, sandboxes, harness and routes, under one lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

import anyio
import mcp.types as mcp_types
from mcp import Client
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Mount, Route

from gateway.api import (
    admin_audit,
    agents,
    api_keys,
    deployments,
    dreams,
    egress,
    environments,
    files,
    memory_stores,
    session_resources,
    sessions,
    skills,
    threads,
    vaults,
    webhooks,
    work,
)
from gateway.api import insights as insight_routes
from gateway.api.admin_audit import AdminAuditMiddleware
from gateway.api.auth import APIKeyMiddleware
from gateway.api.errors import HANDLERS, STORE_RETRY_AFTER_SECONDS
from gateway.api.state import GatewayState
from gateway.background import supervised
from gateway.config import SCRIPTED_MODEL_PATH, ConfigError, Settings
from gateway.harness.file_blocks import Uploads
from gateway.harness.loop import Harness
from gateway.harness.model import ModelClient
from gateway.harness.previews import PreviewHub
from gateway.harness.retry import RetryPolicy
from gateway.harness.runner import SessionRunner
from gateway.mcp_gateway import wiring as mcp_gateway
from gateway.observability import metrics, tracing
from gateway.observability.observed_store import observe_store
from gateway.resources import skill_uploads, uploads
from gateway.resources.skill_index import SkillIndex
from gateway.resources.skills import skills_dir
from gateway.scheduling.dreams import Dreamer
from gateway.scheduling.scheduler import Scheduler
from gateway.scripted_model.script import ScriptBook
from gateway.scripted_model.server import create_app as create_scripted_model
from gateway.serving import TLSFiles, bind_or_exit, serve_socket, socket_url
from gateway.store import open_store
from gateway.store.base import StoreUnavailable
from gateway.store.patient import patient
from gateway.tools.memory_sync import MemorySync
from gateway.tools.placement import Placer
from gateway.tools.sandbox import SandboxPool
from gateway.tools.sandbox_plan import SandboxPlanner, SelfHostedSandboxes
from gateway.tools.start_queue import StartQueue
from gateway.tunnels import wiring as tunnel_wiring
from gateway.ui import routes as ui_routes
from gateway.vault.keyring import KeyRing
from gateway.webhooks.dispatcher import WebhookDispatcher
from policies.engine import PolicySet
from policies.rules import PolicyError

log = logging.getLogger("tether")

DEMO_SCRIPT = Path(__file__).parent / "scripted_model" / "demo_script.json"
READY_CHECK_SECONDS = 2.0
GC_THRESHOLDS = (50_000, 20, 100)
"""Young-generation allocations between collections (default 700), then the older ratios."""


class SandboxCatalog:
    """The toolset's tool definitions, listed once over MCP from an in-memory sandbox server."""

    def __init__(self) -> None:
        self._tools: Sequence[mcp_types.Tool] | None = None
        self._lock = anyio.Lock()

    async def __call__(self) -> Sequence[mcp_types.Tool]:
        async with self._lock:
            if self._tools is None:
                from sandbox_server.server import build_server

                with tempfile.TemporaryDirectory() as scratch:
                    async with Client(build_server(Path(scratch))) as client:
                        self._tools = (await client.list_tools()).tools
            return self._tools


async def health(request: Request) -> JSONResponse:
    """Liveness: the process serves. Restarting it would not help a database outage."""
    return JSONResponse({"status": "ok"})


async def ready(request: Request) -> JSONResponse:
    """Readiness: the store takes writes now, so requests can be served (503 while it cannot)."""
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        with anyio.fail_after(READY_CHECK_SECONDS):
            await gateway.store.check()
    except (StoreUnavailable, TimeoutError) as exc:
        reason = str(exc) or "the store did not answer within the readiness check's time"
        return JSONResponse(
            {"status": "unavailable", "reason": reason},
            status_code=503,
            headers={"retry-after": str(STORE_RETRY_AFTER_SECONDS)},
        )
    return JSONResponse({"status": "ready"})


def settle_heap() -> None:
    """Keep the garbage collector off the start-up objects and out of the request path.

    Hundreds of thousands of objects made at import and start-up live as long as the process;
    every full collection rescanned them (in a busy gateway, ~40% of its CPU and pauses of
    ~150 ms, growing with load). Freezing moves them out of the collector's sight, and larger
    young-generation thresholds make collections rarer; reference counting still frees the
    per-request garbage at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLDS[0], GC_THRESHOLDS[1], GC_THRESHOLDS[2])


def create_app(settings: Settings, policies: PolicySet | None = None) -> Starlette:
    """``settings.model_base_url`` must be set (``run_gateway`` points it at the embedded model)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        shutdown_tracing = tracing.configure_tracing()
        raw_store = await open_store(settings.database_url)
        # Background work waits out a database outage; the API answers 503 at once instead.
        dispatcher = WebhookDispatcher.from_env(patient(raw_store))
        # Every committed append feeds the metrics and queues status webhooks (never blocking).
        observers = (metrics.observe_events, dispatcher.observe)
        store = observe_store(raw_store, *observers)
        work_store = observe_store(patient(raw_store), *observers)
        keyring = KeyRing.load(settings.data_dir / "master.keys", os.environ.get("TETHER_MASTER_KEY"))
        sandboxes = SandboxPool(
            settings.workspaces_dir,
            settings.sandbox_args,
            # Never reap a sandbox while a tool call could still be running in it.
            idle_seconds=max(settings.sandbox_idle_seconds, settings.tool_timeout + 60),
            plan=SandboxPlanner(work_store, keyring, settings.public_url, settings.data_dir),
            # Self-hosted sessions use the sandbox their on-prem worker runs, through its tunnel.
            locate=SelfHostedSandboxes(
                work_store, settings.tunnel_base_domain, settings.self_hosted_wait_seconds
            ),
            # A pid file per running sandbox, so a restart finds any a killed gateway left behind.
            state_dir=settings.data_dir / "sandboxes",
            # Starts take turns, so a burst of sessions never times out for lack of CPU.
            start_queue=StartQueue(settings.sandbox_start_concurrency),
            start_timeout=settings.sandbox_start_timeout,
            warm_pool=settings.sandbox_warm_pool,  # started ahead of need: a first call skips the imports
            zygote=settings.sandbox_zygote,  # forked from one template: they share its memory
        )
        model = ModelClient(
            settings.model_api_key or settings.api_keys[0],
            settings.model_base_url,
            settings.model_stream_timeout,
        )
        try:
            await sandboxes.stop_leftovers()
            await anyio.to_thread.run_sync(
                uploads.remove_stale_partials, uploads.files_dir(settings.data_dir)
            )
            await anyio.to_thread.run_sync(skill_uploads.remove_stale_staging, skills_dir(settings.data_dir))
            sandboxes.check_host()  # one line if bash cannot run here (no bubblewrap)
            sandboxes.warm_up()
            async with (
                tunnel_wiring.running_hub(app, store, settings.tunnel_base_domain, sealer=keyring) as hub,
                anyio.create_task_group() as tasks,
            ):
                previews = PreviewHub()
                skill_index = SkillIndex()
                harness = Harness(
                    store=work_store,
                    previews=previews,
                    model=model,
                    sandboxes=sandboxes,
                    sandbox_catalog=SandboxCatalog(),
                    uploads=Uploads(work_store, settings.data_dir),
                    max_output_tokens=settings.max_output_tokens,
                    prompt_caching=settings.prompt_caching,
                    prices=settings.prices,
                    outcome_heartbeat_seconds=settings.outcome_heartbeat_seconds,
                    tool_timeout=settings.tool_timeout,
                    policies=policies or PolicySet(),
                    keyring=keyring,
                    transport_for=hub.transport_for,
                    skill_index=skill_index,
                    placer=Placer(
                        work_store,
                        keyring,
                        settings.data_dir,
                        settings.git_base_url,
                        hub.transport_for,
                        skill_index,
                    ),
                    memory=MemorySync(work_store, hub.transport_for),
                    retry=RetryPolicy(
                        settings.model_max_attempts,
                        settings.model_retry_base_seconds,
                        settings.model_retry_max_seconds,
                    ),
                )
                runner = SessionRunner(harness, tasks, lease_ttl=settings.lease_ttl_seconds)
                dreamer = Dreamer(work_store, runner)
                for name, loop in (
                    ("sandbox reaper", sandboxes.reap_forever),
                    ("session pickup", runner.pickup_forever),
                    ("webhook deliveries", dispatcher.run),
                    ("deployment schedules", Scheduler(work_store, runner.wake, settings.prices).run_forever),
                    ("dreams", dreamer.sweep_forever),
                    (
                        "upload expiry",
                        partial(uploads.expire_forever, work_store, uploads.files_dir(settings.data_dir)),
                    ),
                ):
                    tasks.start_soon(supervised, name, loop, name=name)
                app.state.gateway = GatewayState(
                    settings, store, runner, sandboxes, keyring, previews, dreamer
                )
                async with mcp_gateway.lifespan(
                    app, store, keyring, policies or PolicySet(), settings, transport_for=hub.transport_for
                ):
                    settle_heap()
                    yield
                await runner.shutdown()
                tasks.cancel_scope.cancel()
        finally:
            await sandboxes.close()
            await model.close()
            await store.close()
            shutdown_tracing()

    routes: list[BaseRoute] = [
        Route("/health", health),
        Route("/ready", ready),
        *agents.routes,
        *environments.routes,
        *sessions.routes,
        *session_resources.routes,
        *threads.routes,
        *deployments.routes,
        *files.routes,
        *skills.routes,
        *memory_stores.routes,
        *dreams.routes,
        *vaults.routes,
        *egress.routes,
        *work.routes,
        *mcp_gateway.routes(),
        *tunnel_wiring.routes(),
        *webhooks.routes,
        *api_keys.routes,
        *admin_audit.routes,
        *insight_routes.routes,
        *ui_routes.routes,
    ]
    if settings.serve_scripted_model:
        routes.append(Mount(SCRIPTED_MODEL_PATH, app=create_scripted_model(ScriptBook.load(DEMO_SCRIPT))))
    return Starlette(
        routes=routes,
        middleware=[
            # Outermost, so requests the key check refuses are counted too.
            Middleware(metrics.MetricsMiddleware, routes=routes),
            Middleware(
                APIKeyMiddleware,
                keys=settings.api_keys,
                public_paths=(
                    "/health",
                    "/ready",
                    egress.PATH,
                    *tunnel_wiring.PUBLIC_PATHS,
                    *ui_routes.PUBLIC_PATHS,
                    *metrics.public_paths(),
                ),
                # The MCP endpoints authenticate callers themselves (API keys or scoped tokens).
                public_prefixes=mcp_gateway.PUBLIC_PATH_PREFIXES,
            ),
            # Inside the key check, which names the caller.
            Middleware(AdminAuditMiddleware),
        ],
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
        lifespan=lifespan,
    )


def run_gateway(
    host: str,
    port: int,
    data_dir: str | None,
    policy_files: Sequence[str] = (),
    tls: TLSFiles | None = None,
) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx2", "httpx", "mcp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        settings = Settings.from_env(data_dir)
    except ConfigError as exc:
        sys.exit(f"tether: {exc}")
    settings.policy_files += list(policy_files)
    try:
        policies = PolicySet.load(settings.policy_files)
    except PolicyError as exc:
        # Never run without the policy an operator asked for.
        sys.exit(f"tether: refusing to start, invalid policy file: {exc}")
    if settings.policy_files:
        log.info("policy files: %s (%d rules)", ", ".join(settings.policy_files), len(policies.rules))
    if tls is not None and (problem := tls.check()) is not None:
        sys.exit(f"tether: {problem}")
    sock = bind_or_exit(host, port)
    # With TLS, the gateway's calls to itself (the embedded model, the credentials sandboxes
    # fetch) go to a plain-HTTP listener on loopback: no certificate covers 127.0.0.1 or
    # 0.0.0.0. It serves the same app, so the same keys and tokens are required there.
    internal = bind_or_exit("127.0.0.1", 0) if tls is not None else None
    own_url = socket_url(internal if internal is not None else sock)
    settings.public_url = own_url
    embedded = settings.model_base_url is None and settings.model_api_key is None
    if embedded:
        settings.serve_scripted_model = True
        settings.model_base_url = own_url + SCRIPTED_MODEL_PATH
    if settings.key_file is not None:  # the key itself only when this start generated it
        shown = settings.api_keys[0] if settings.generated_key else "kept"
        print(f"API key (x-api-key): {shown}  (stored in {settings.key_file})", flush=True)
    model = (
        "the scripted model (no ANTHROPIC_API_KEY)"
        if embedded
        else (settings.model_base_url or "Anthropic API")
    )
    log.info("data in %s; model: %s", settings.data_dir, model)
    serve_socket(create_app(settings, policies), sock, log_level="warning", tls=tls, internal=internal)
