"""The agent loop: log -> Messages API -> tools -> log, until the turn ends.

Each step decides from the log alone (see ``transcript``): the loop holds no state a crash
could lose. Intent (``*_tool_use``) is logged before a tool runs, the outcome after."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp.types as mcp_types

from gateway.harness import file_blocks, memory_prompt, model_turn, outcomes, skill_prompt
from gateway.harness.model import ModelClient
from gateway.harness.previews import PreviewHub
from gateway.harness.responses import POLICY_FIELD, request_end
from gateway.harness.retry import RetryPolicy
from gateway.harness.run import Run
from gateway.harness.tool_progress import tool_progress
from gateway.harness.transcripts import TranscriptCache
from gateway.observability import tracing
from gateway.pricing import DEFAULT_TABLE, PriceTable
from gateway.resources import budgets, files, session_resources
from gateway.resources import sessions as session_state
from gateway.resources.skill_index import SkillIndex
from gateway.sessionlog import events as ev
from gateway.sessionlog.transcript import RESULT_TYPES, ToolCall, Transcript
from gateway.store.base import Body, Store, StoredEvent
from gateway.tools import mcp_client
from gateway.tools.memory_sync import MemorySync
from gateway.tools.placement import Placer
from gateway.tools.sandbox import SandboxPool, SandboxStartFailed
from gateway.tools.start_queue import StillQueued
from gateway.tools.toolbox import Toolbox, build_toolbox
from gateway.vault.keyring import KeyRing
from gateway.vault.mcp_auth import RefreshFailed, auth_for
from policies.engine import PolicySet

log = logging.getLogger("tether.harness")

SandboxCatalog = Callable[[], Awaitable[Sequence[mcp_types.Tool]]]

INTERRUPTED_BY_RESTART = (
    "The tool call was interrupted by a gateway restart and was not re-run, because the tool "
    "is not declared read-only or idempotent. Check its effects before trying again."
)


@dataclass
class Harness:
    store: Store
    model: ModelClient
    sandboxes: SandboxPool
    sandbox_catalog: SandboxCatalog
    max_output_tokens: int = 8192
    prompt_caching: bool = True
    """The gateway's default; an agent's ``tether.prompt_caching`` overrides it."""
    tool_timeout: float = 600.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    policies: PolicySet = field(default_factory=PolicySet)
    keyring: KeyRing | None = None
    transport_for: mcp_client.TransportFor | None = None
    """Routes MCP servers under a tunnel's domain through that tunnel."""
    uploads: file_blocks.Uploads | None = None
    """Where files named in messages are read from, to send them inline."""
    transcripts: TranscriptCache = field(default_factory=TranscriptCache)
    previews: PreviewHub = field(default_factory=PreviewHub)
    """Where replies being streamed are previewed to ``event_deltas`` streams of this process."""
    prices: PriceTable = DEFAULT_TABLE
    """List prices: each call's cost is added to the session's, and a budget is checked on it."""
    outcome_heartbeat_seconds: float = 10.0
    """How often ``span.outcome_evaluation_ongoing`` says a grader is still at work."""
    skill_index: SkillIndex = field(default_factory=SkillIndex)
    """The agent's skill versions, resolved once (for the prompt; the placer shares it)."""
    placer: Placer | None = None
    """Puts the session's resources in its sandbox before its tools run."""
    memory: MemorySync | None = None
    """Keeps the session's mounted memory stores and the stores in step around each tool call."""

    async def transcript(self, run: Run) -> Transcript:
        transcript = await self.transcripts.current(self.store, run.session_id)
        run.last_seq = max(run.last_seq, transcript.last_seq)
        return transcript

    async def run(self, run: Run) -> None:
        session = await self.store.get("session", run.session_id)
        if session is None or session["status"] == "terminated" or session.get("archived_at"):
            run.last_seq = await self.store.last_seq(run.session_id)  # nothing here to answer
            return
        agent = skill_prompt.with_skills(
            session["agent"], await self.skill_index.refs(self.store, session["agent"])
        )
        agent = memory_prompt.with_memory(agent, session_resources.memory_attachments(session))
        run.vault_ids = list(session.get("vault_ids") or [])
        with tracing.turn_span(
            run.session_id,
            agent_id=agent.get("id"),
            agent_name=agent.get("name"),
            agent_version=agent.get("version"),
        ):
            await self._run_turn(run, agent)

    async def _run_turn(self, run: Run, agent: Body) -> None:
        """One turn, inside its trace: until the session idles."""
        toolbox: Toolbox | None = None
        transcript = await self.transcript(run)
        if transcript.status != "idle":
            toolbox = await self._toolbox(run, agent)
            await self._recover(run, transcript, toolbox)
            transcript = await self.transcript(run)
        while True:
            runnable = [call for call in transcript.pending() if not call.awaits_client]
            if runnable:
                await self._ensure_running(run, transcript)
                toolbox = toolbox or await self._toolbox(run, agent)
                for call in runnable:
                    await self._settle(run, agent, toolbox, call)
                transcript = await self.transcript(run)
                continue
            waiting = transcript.awaiting_client()
            if waiting:
                await self._idle(run, transcript, "requires_action", [c.id for c in waiting])
                return
            if transcript.needs_model():
                if await self._over_budget(run):
                    await self._idle(run, transcript, "budget_reached")
                    return
                await self._ensure_running(run, transcript)
                toolbox = toolbox or await self._toolbox(run, agent)
                turn = await self._model_turn(run, agent, toolbox)
                if turn == "over_budget":  # a summarising call spent what was left
                    await self._idle(run, await self.transcript(run), "budget_reached")
                    return
                if turn == "failed":
                    transcript = await self.transcript(run)
                    if transcript.status == "terminated":  # a terminal model error ended it
                        tracing.set_stop_reason("terminated")
                        await files.sync_session(self.store, self.sandboxes.workspaces, run.session_id)
                    else:
                        await self._idle(run, transcript, "retries_exhausted")
                    return
                transcript = await self.transcript(run)
                continue
            if transcript.needs_evaluation():
                if await self._over_budget(run):
                    await self._idle(run, transcript, "budget_reached")
                    return
                await self._ensure_running(run, transcript)
                if not await outcomes.evaluate(self, run, agent, transcript):
                    await self._idle(run, await self.transcript(run), "retries_exhausted")
                    return
                transcript = await self.transcript(run)
                continue
            await self._idle(run, transcript, "end_turn")
            return

    async def _recover(self, run: Run, transcript: Transcript, toolbox: Toolbox) -> None:
        """The previous run of this session never finished (a crash or a shutdown).

        A model request it left open is closed as failed. A tool call it may have been running
        is re-run only when the tool declares itself read-only or idempotent; otherwise the
        model gets an error result, because running it twice could repeat a side effect.
        """
        log.info("recovering %s (status %s)", run.session_id, transcript.status)
        closing: list[Body] = []
        if transcript.status == "running":
            closing.append(ev.new_event("session.status_rescheduled"))
        if transcript.open_model_request is not None:
            closing.append(request_end(transcript.open_model_request, None, is_error=True))
        for call in transcript.pending():
            if call.awaits_client:
                continue
            spec = toolbox.lookup(toolbox.exposed_name(call.use))
            if spec is not None and spec.safe_to_retry:
                continue
            result_type, link = RESULT_TYPES[call.kind]
            # What the call changed in a mounted memory store is saved now, not at some later call.
            said = "\n".join([INTERRUPTED_BY_RESTART, *await self._memory_after_restart(run, spec)])
            closing.append(ev.text_result(result_type, link, call.id, said, True))
        if closing:
            await self.append(run, *closing)

    async def _memory_after_restart(self, run: Run, spec: Any) -> list[str]:
        if self.memory is None or spec is None or spec.kind != "agent":
            return []
        try:
            endpoint = await self.sandboxes.endpoint(run.session_id, patience=self.tool_timeout)
        except (StillQueued, SandboxStartFailed):
            return []  # the next sandbox call saves it
        return await self.memory.sync(run.session_id, endpoint)

    # Status ------------------------------------------------------------------------------

    async def append(self, run: Run, *bodies: Body) -> list[StoredEvent]:
        stored = await self.store.append_events(
            run.session_id, [_without_nul(b) for b in bodies], fence=run.lease
        )
        # Only a batch right after what the run has seen extends it: anything appended in
        # between (a client's message) is still unseen.
        if stored[0].seq == run.last_seq + 1:
            run.last_seq = stored[-1].seq
        return stored

    async def _ensure_running(self, run: Run, transcript: Transcript) -> None:
        if transcript.status != "running":
            await self.append(run, ev.new_event("session.status_running"))
            transcript = await self.transcript(run)
        await outcomes.sync(self.store, run.session_id, transcript)

    async def _idle(
        self, run: Run, transcript: Transcript, reason: str, event_ids: list[str] | None = None
    ) -> None:
        tracing.set_stop_reason(reason)
        await outcomes.sync(self.store, run.session_id, transcript)  # an interrupt may have ended one
        if transcript.status == "idle":
            since = transcript.last_status_seq
            if max(transcript.last_input_seq, transcript.last_interrupt_seq) <= since:
                return  # woken with nothing new since it last idled (or since it began): nothing to say
            said = (transcript.last_idle or {}).get("stop_reason") or {}
            if (
                said.get("type") == reason
                and said.get("event_ids") == event_ids
                and transcript.last_input_seq < since
            ):
                return  # already said, and no input came in since
        await self.append(run, ev.status_idle(reason, event_ids))
        await outcomes.sync(self.store, run.session_id, await self.transcript(run))
        await files.sync_session(self.store, self.sandboxes.workspaces, run.session_id)

    # Tools -------------------------------------------------------------------------------

    async def _toolbox(self, run: Run, agent: Body) -> Toolbox:
        sandbox_tools = await self.sandbox_catalog() if _uses_toolset(agent) else []
        listings: dict[str, Sequence[mcp_types.Tool]] = {}
        unavailable: dict[str, str] = {}
        for server in agent["mcp_servers"]:
            try:
                headers = await self._server_headers(run, server)
                listings[server["name"]] = await mcp_client.list_tools(
                    server["url"], headers, self.transport_for
                )
            except RefreshFailed as exc:
                unavailable[server["name"]] = f"authentication failed: {exc}"
            except mcp_client.MCPUnavailable as exc:
                unavailable[server["name"]] = str(exc)
                await self.append(
                    run,
                    ev.session_error(
                        "mcp_connection_failed_error",
                        f"MCP server {server['name']!r} is unavailable: {exc}",
                        mcp_server_name=server["name"],
                    ),
                )
        return build_toolbox(agent, sandbox_tools, listings, unavailable)

    async def _settle(self, run: Run, agent: Body, toolbox: Toolbox, call: ToolCall) -> None:
        """Run an allowed tool call, or record why it did not run."""
        result_type, link = RESULT_TYPES[call.kind]
        if call.permission == "deny":
            reason = (call.use.get(POLICY_FIELD) or {}).get(
                "message"
            ) or "This tool call was denied by policy."
            await self.append(run, ev.text_result(result_type, link, call.id, reason, True))
            return
        confirmation = call.confirmation
        if call.permission == "ask" and confirmation is not None and confirmation["result"] == "deny":
            message = confirmation.get("deny_message") or "The user denied this tool call."
            await self.append(run, ev.text_result(result_type, link, call.id, message, True))
            return
        run.tool_call = call
        try:
            with tracing.tool_span(
                call.use["name"],
                call.id,
                call.kind,
                server=call.use.get("mcp_server_name"),
                permission=call.permission,
            ) as span:
                content, is_error = await self._execute(run, agent, toolbox, call)
                span.result(is_error)
        finally:
            run.tool_call = None
        await self.append(
            run, ev.new_event(result_type, **{link: call.id}, content=content, is_error=is_error)
        )

    async def _server_headers(self, run: Run, server: Body) -> dict[str, str]:
        """The server's credential from the session's vaults, added on this last hop only.
        A failed OAuth refresh is recorded as a ``session.error`` and re-raised."""
        if self.keyring is None or not run.vault_ids:
            return {}
        try:
            return (await auth_for(self.store, self.keyring, run.vault_ids, server["url"])).headers
        except RefreshFailed as exc:
            await self.append(
                run,
                ev.session_error(
                    "mcp_authentication_failed_error",
                    f"refreshing the credential for MCP server {server['name']!r} failed: {exc}",
                    mcp_server_name=server["name"],
                ),
            )
            raise

    async def _execute(
        self, run: Run, agent: Body, toolbox: Toolbox, call: ToolCall
    ) -> tuple[list[dict[str, Any]], bool]:
        session_id = run.session_id
        spec = toolbox.lookup(toolbox.exposed_name(call.use))
        if spec is None:
            if call.use.get("mcp_server_name") in toolbox.unavailable:
                server = call.use["mcp_server_name"]
                return _text(f"MCP server {server!r} is unavailable: {toolbox.unavailable[server]}"), True
            return _text(f"Tool {call.use['name']!r} is not available to this agent."), True
        arguments = call.use.get("input") or {}
        notes: list[str] = []
        if spec.kind == "agent":
            try:
                # A queued start waits, as long as the call itself may take.
                endpoint = await self.sandboxes.endpoint(session_id, patience=self.tool_timeout)
            except StillQueued as exc:
                return _text(f"Still waiting for a sandbox: {exc}. Try the call again."), True
            except SandboxStartFailed as exc:
                return _text(f"The sandbox could not be started: {exc}"), True
            if self.placer is not None:
                for error in await self.placer.ensure(session_id, endpoint):
                    await self.append(run, error)
            if self.memory is not None:
                notes += await self.memory.sync(session_id, endpoint)
            url, where = endpoint.url, "the sandbox"
            headers: dict[str, str] = dict(endpoint.headers)
        else:
            server = next(s for s in agent["mcp_servers"] if s["name"] == spec.server)
            url, where = server["url"], f"MCP server {spec.server!r}"
            try:
                headers = await self._server_headers(run, server)
            except RefreshFailed as exc:
                return _text(f"{where} could not be authenticated: {exc}"), True
        # The tool's progress notifications are previewed under the pending tool use's id.
        async with tool_progress(self.previews, session_id, call.seq, call.id) as progress:
            try:
                outcome = await self._call(url, spec.name, arguments, headers, progress.report)
            except mcp_client.MCPUnavailable as exc:
                fresh = None
                if spec.kind == "agent" and exc.never_connected:
                    try:
                        fresh = await self.sandboxes.replacement(session_id, endpoint)
                    except SandboxStartFailed as failed:
                        return _text(f"The sandbox stopped and could not be restarted: {failed}"), True
                if fresh is None:
                    return _text(f"{where} is unavailable: {exc}"), True
                try:  # the old sandbox died before the call reached it; nothing ran twice
                    outcome = await self._call(
                        fresh.url, spec.name, arguments, dict(fresh.headers), progress.report
                    )
                except mcp_client.MCPUnavailable as again:
                    return _text(f"{where} is unavailable: {again}"), True
                endpoint = fresh
        if spec.kind == "agent" and self.memory is not None:  # written back before the result is logged
            notes += await self.memory.sync(session_id, endpoint)
        return outcome.content + _text("\n".join(notes)) if notes else outcome.content, outcome.is_error

    async def _call(
        self,
        url: str,
        name: str,
        arguments: dict[str, Any],
        headers: dict[str, str],
        on_progress: mcp_client.ProgressFnT | None = None,
    ) -> mcp_client.ToolOutcome:
        return await mcp_client.call_tool(
            url,
            name,
            arguments,
            headers,
            timeout=self.tool_timeout,
            transport_for=self.transport_for,
            on_progress=on_progress,
        )

    async def _over_budget(self, run: Run) -> bool:
        return budgets.exhausted(await session_state.get(self.store, run.session_id), self.prices)

    async def _model_turn(self, run: Run, agent: Body, toolbox: Toolbox) -> str:
        return await model_turn.take(self, run, agent, toolbox, self._over_budget)


def _without_nul(value: Any) -> Any:
    """Model and tool output may contain U+0000, which the log cannot store: show it as U+FFFD."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _uses_toolset(agent: Body) -> bool:
    return any(tool["type"] == "agent_toolset_20260401" for tool in agent["tools"])


def _text(message: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": message}]
