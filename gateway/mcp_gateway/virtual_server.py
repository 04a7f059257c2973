"""The MCP request handlers behind every ``/mcp/{name}``: list, route, govern, audit.

One low-level ``Server`` serves all virtual servers; each handler finds its virtual server
and caller in the request (``context.request_info``), builds that server's view from the
catalog, and routes by exposed name back to (upstream, original name).

A ``tools/call`` runs the pipeline it shares with the express lane (``tool_calls``):
lookup, policy, the vault credential for the upstream, then the upstream under its breaker
and the call timeout, and one audit record whatever its fate. Most 2026-07-28 calls never
reach this handler: the front door gives them to the express lane (``express``).

Resources and prompts route the same way (without the policy step, which governs tools);
their failures are protocol errors, as those methods have no ``is_error``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from typing import Any, TypeVar

import mcp.types as mcp_types
from mcp import Client, MCPError
from mcp.server import NotificationOptions, Server
from mcp.server.context import ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.shared.dispatcher import ProgressFnT
from pydantic import ValidationError

from gateway.mcp_gateway.audit import AuditLog
from gateway.mcp_gateway.catalog import Catalog, Target, View
from gateway.mcp_gateway.context import RequestInfo, current_virtual_server, request_info
from gateway.mcp_gateway.credentials import Credentials
from gateway.mcp_gateway.errors import UpstreamTimeout, UpstreamUnavailable
from gateway.mcp_gateway.governance import Governance
from gateway.mcp_gateway.notifications import Broadcaster, SessionTracker
from gateway.mcp_gateway.registry import Registry
from gateway.mcp_gateway.sizing import MessageTooLarge
from gateway.mcp_gateway.tool_calls import CallContext, ResultShape, ToolCalls, too_large_error
from gateway.mcp_gateway.upstreams import UpstreamPool
from gateway.mcp_gateway.wire import Era, Wire

T = TypeVar("T")
Ctx = ServerRequestContext[Any, Any]
RESOURCE_NOT_FOUND = -32002
SERVER_INFO_KEY = "io.modelcontextprotocol/serverInfo"


def _version() -> str:
    try:
        return metadata.version("tether")
    except metadata.PackageNotFoundError:
        return "0"


NOT_RELAYED = "the upstream's answer to {name!r} is not a result the gateway relays"
GATEWAY_CLIENT_INFO = {"name": "tether-mcp-gateway", "version": _version()}
"""Who the express lane says is calling, in each request's ``_meta`` (2026-07-28 has no handshake)."""


class GatewayServer(Server[Any]):
    """Advertises ``list_changed`` to legacy clients too (the gateway relays upstream changes),
    and never ``resources.subscribe`` (it does not relay resource updates)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        every_list = NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True)
        return super().create_initialization_options(
            notification_options or every_list, experimental_capabilities, extensions
        )

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> mcp_types.ServerCapabilities:
        """Never ``resources.subscribe``: per-resource updates are not relayed (docs/mcp-gateway.md).

        The SDK derives it from ``subscriptions/listen`` at 2026-07-28, which the gateway
        serves for list changes only; a client told otherwise would subscribe in vain.
        """
        capabilities = super().get_capabilities(
            notification_options, experimental_capabilities, extensions, protocol_version=protocol_version
        )
        if capabilities.resources is not None:
            resources = capabilities.resources.model_copy(update={"subscribe": False})
            capabilities = capabilities.model_copy(update={"resources": resources})
        return capabilities


async def forward_call(
    client: Client,
    tool: mcp_types.Tool,
    arguments: dict[str, Any],
    progress: ProgressFnT | None = None,
) -> mcp_types.CallToolResult:
    """``tools/call`` of the upstream's ``tool`` passed through as is.

    Not ``Client.call_tool``: it validates structured output against the tool's output
    schema, listing the tools first on every fresh connection (an extra round trip per
    call), and judging the upstream's output is the downstream client's business. The
    fresh client is told the tool instead, so it mirrors the arguments its schema marks
    ``x-mcp-header`` into ``Mcp-Param-*`` headers, which a 2026-07-28 upstream requires.
    With ``progress``, the upstream gets a progress token of its own and its
    ``notifications/progress`` are handed to ``progress``.
    """
    # The SDK keeps no public way to seed what a listing teaches (pinned SDK; tested).
    client.session._absorb_tool_listing(mcp_types.ListToolsResult(tools=[tool]), complete=False)
    request = mcp_types.CallToolRequest(
        params=mcp_types.CallToolRequestParams(name=tool.name, arguments=arguments)
    )
    try:
        return await client.session.send_request(
            request, mcp_types.CallToolResult, progress_callback=progress
        )
    except ValidationError:
        # e.g. an input_required result: the upstream answered, the gateway cannot relay it.
        raise MCPError(mcp_types.INTERNAL_ERROR, NOT_RELAYED.format(name=tool.name)) from None


def progress_relay(ctx: Ctx) -> ProgressFnT | None:
    """Relays upstream progress to the client, against the client's own token; None if it sent none."""
    if (ctx.meta or {}).get("progress_token") is None:
        return None

    async def relay(progress: float, total: float | None, message: str | None) -> None:
        await ctx.session.report_progress(progress, total, message)

    return relay


def error_result(text: str) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)], is_error=True)


SDK_RESULTS = ResultShape(error_result, lambda result: bool(result.is_error))


def without_upstream_identity(meta: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Results are the gateway's: the upstream's own ``serverInfo`` stamp is not passed on."""
    if not meta:
        return None
    kept = {key: value for key, value in meta.items() if key != SERVER_INFO_KEY}
    return kept or None


class Handlers:
    def __init__(
        self,
        registry: Registry,
        catalog: Catalog,
        pool: UpstreamPool,
        credentials: Credentials,
        governance: Governance,
        audit: AuditLog,
    ) -> None:
        self.registry = registry
        self.catalog = catalog
        self.pool = pool
        self.credentials = credentials
        self.governance = governance
        self.tool_calls = ToolCalls(governance, audit)

    async def view(self, info: RequestInfo) -> View:
        vault_ids = info.virtual_server.get("vault_ids") or []

        async def credential(body: dict[str, Any]) -> Any:
            return await self.credentials.for_upstream(vault_ids, body)

        return await self.catalog.view(info.virtual_server, self.registry.snapshot.servers, credential)

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        """For the SDK's ``Mcp-Param-*`` header check: the schema from the last view, never a fetch."""
        virtual_server = current_virtual_server.get()
        view = self.catalog.last_views.get(virtual_server or "")
        entry = view.tools.get(name) if view is not None else None
        return entry[1].input_schema if entry is not None else None

    async def _upstream(self, info: RequestInfo, target: Target, op: Callable[[Client], Awaitable[T]]) -> T:
        auth, timeout = await self._last_hop(info, target)
        return await self.pool.use(target.upstream, auth, op, timeout)

    async def wire_upstream(
        self, info: RequestInfo, target: Target, op: Callable[[Wire], Awaitable[T]], era: Era
    ) -> T:
        """``_upstream`` for the express lane, which speaks the wire itself."""
        auth, timeout = await self._last_hop(info, target)
        return await self.pool.use_wire(target.upstream, auth, op, timeout, era)

    async def _last_hop(self, info: RequestInfo, target: Target) -> tuple[dict[str, str], float]:
        """The upstream's credential headers for this virtual server, and the call's timeout."""
        body = self.registry.server(target.upstream)
        if body is None:
            raise UpstreamUnavailable("it is not registered")
        auth = await self.credentials.for_upstream(info.virtual_server.get("vault_ids") or [], body)
        return auth.headers, self.governance.limits(info.virtual_server, body).call_timeout

    def _request(self, ctx: Ctx) -> CallContext:
        return CallContext.now(request_info(ctx), ctx.method, ctx.protocol_version)

    # Tools ---------------------------------------------------------------------------

    async def list_tools(
        self, ctx: Ctx, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListToolsResult:
        view = await self.view(request_info(ctx))
        return mcp_types.ListToolsResult(tools=[tool for _, tool in view.tools.values()])

    async def call_tool(self, ctx: Ctx, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        request = self._request(ctx)
        arguments = dict(params.arguments or {})
        view = await self.view(request.info)
        progress = progress_relay(ctx)

        async def forward(target: Target) -> mcp_types.CallToolResult:
            tool = view.tools[params.name][1].model_copy(update={"name": target.name})
            result = await self._upstream(
                request.info, target, lambda client: forward_call(client, tool, arguments, progress)
            )
            return result.model_copy(update={"meta": without_upstream_identity(result.meta)})

        return await self.tool_calls.run(request, view, params.name, arguments, forward, SDK_RESULTS)

    # Resources -----------------------------------------------------------------------

    async def list_resources(
        self, ctx: Ctx, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListResourcesResult:
        view = await self.view(request_info(ctx))
        return mcp_types.ListResourcesResult(resources=[resource for _, resource in view.resources.values()])

    async def list_resource_templates(
        self, ctx: Ctx, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListResourceTemplatesResult:
        view = await self.view(request_info(ctx))
        return mcp_types.ListResourceTemplatesResult(resource_templates=[t for _, t in view.templates])

    async def read_resource(
        self, ctx: Ctx, params: mcp_types.ReadResourceRequestParams
    ) -> mcp_types.ReadResourceResult:
        request = self._request(ctx)
        info = request.info
        view = await self.view(info)
        target = view.route_uri(params.uri)
        if target is None:
            await self.tool_calls.record(request, "not_found", params.uri, None, None, "unknown resource")
            raise MCPError(RESOURCE_NOT_FOUND, f"Resource not found: {params.uri}")
        try:
            result = await self._upstream(info, target, lambda client: client.read_resource(target.name))
        except UpstreamUnavailable as exc:
            outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
            await self.tool_calls.record(request, outcome, params.uri, target, None, str(exc))
            raise MCPError(
                mcp_types.INTERNAL_ERROR,
                f"Resource {params.uri} is unavailable: upstream server {target.upstream!r} cannot be "
                f"reached ({exc})",
            ) from None
        except MessageTooLarge as exc:
            await self.tool_calls.record(request, "too_large", params.uri, target, None, str(exc))
            raise too_large_error(f"Resource {params.uri}", exc) from None
        except MCPError as exc:
            await self.tool_calls.record(request, "error", params.uri, target, None, str(exc))
            raise
        await self.tool_calls.record(request, "ok", params.uri, target, None)
        contents = [
            content.model_copy(
                update={
                    "uri": params.uri
                    if content.uri == target.name
                    else view.exposed_uri(target.upstream, content.uri)
                }
            )
            for content in result.contents
        ]
        return result.model_copy(
            update={"contents": contents, "meta": without_upstream_identity(result.meta)}
        )

    # Prompts -------------------------------------------------------------------------

    async def list_prompts(
        self, ctx: Ctx, params: mcp_types.PaginatedRequestParams | None
    ) -> mcp_types.ListPromptsResult:
        view = await self.view(request_info(ctx))
        return mcp_types.ListPromptsResult(prompts=[prompt for _, prompt in view.prompts.values()])

    async def get_prompt(
        self, ctx: Ctx, params: mcp_types.GetPromptRequestParams
    ) -> mcp_types.GetPromptResult:
        request = self._request(ctx)
        info = request.info
        arguments = dict(params.arguments or {})
        view = await self.view(info)
        entry = view.prompts.get(params.name)
        if entry is None:
            await self.tool_calls.record(request, "not_found", params.name, None, arguments, "unknown prompt")
            raise MCPError(mcp_types.INVALID_PARAMS, f"Unknown prompt: {params.name}")
        target = entry[0]
        try:
            result = await self._upstream(
                info, target, lambda client: client.get_prompt(target.name, arguments or None)
            )
        except UpstreamUnavailable as exc:
            outcome = "timeout" if isinstance(exc, UpstreamTimeout) else "unavailable"
            await self.tool_calls.record(request, outcome, params.name, target, arguments, str(exc))
            raise MCPError(
                mcp_types.INTERNAL_ERROR,
                f"Prompt {params.name!r} is unavailable: upstream server {target.upstream!r} cannot be "
                f"reached ({exc})",
            ) from None
        except MessageTooLarge as exc:
            await self.tool_calls.record(request, "too_large", params.name, target, arguments, str(exc))
            raise too_large_error(f"Prompt {params.name!r}", exc) from None
        except MCPError as exc:
            await self.tool_calls.record(request, "error", params.name, target, arguments, str(exc))
            raise
        await self.tool_calls.record(request, "ok", params.name, target, arguments)
        return result.model_copy(update={"meta": without_upstream_identity(result.meta)})


def build_server(handlers: Handlers, broadcaster: Broadcaster) -> Server[Any]:
    server = GatewayServer(
        "tether-mcp-gateway",
        version=_version(),
        title="Tether MCP gateway",
        get_tool_input_schema=handlers.input_schema,
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
        on_list_resources=handlers.list_resources,
        on_list_resource_templates=handlers.list_resource_templates,
        on_read_resource=handlers.read_resource,
        on_list_prompts=handlers.list_prompts,
        on_get_prompt=handlers.get_prompt,
        on_subscriptions_listen=broadcaster.listen,
    )
    server.middleware.append(SessionTracker(broadcaster))
    return server
