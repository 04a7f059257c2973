"""What each virtual server offers: upstream listings, cached, merged under exposed names.

An upstream's listing (tools, resources, resource templates, prompts) is fetched in one
connection and cached per credential (different vault credentials may see different
tools). It is refetched after a ``list_changed`` from that upstream, after a registry
change, or after ``catalog_ttl`` as a backstop. When the upstream is down, the last
listing is still served: clients keep seeing its tools and get a readable error when
they call one, which is clearer than tools silently vanishing.

A ``View`` is one virtual server's merged offer for one request: the selection's globs
applied, names made unique (``naming``), and a route from each exposed name or URI back
to (upstream, original name). Merged views are cached too, and reused while the virtual
server's body and every listing it was built from are unchanged (a ``list_changed``,
registry change or expiry brings new listings, hence a new view).
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import mcp.types as mcp_types
from mcp import Client, MCPError
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from gateway.mcp_gateway.errors import UpstreamUnavailable
from gateway.mcp_gateway.naming import exposed_names, exposed_templates, exposed_uris, parse_namespaced_uri
from gateway.mcp_gateway.sizing import MessageTooLarge
from gateway.mcp_gateway.upstreams import UpstreamPool
from gateway.store.base import Body
from gateway.vault.mcp_auth import ServerAuth

log = logging.getLogger("tether.mcp_gateway")

PAGE_CAP = 50


@dataclass(frozen=True)
class Listing:
    tools: tuple[mcp_types.Tool, ...] = ()
    resources: tuple[mcp_types.Resource, ...] = ()
    templates: tuple[mcp_types.ResourceTemplate, ...] = ()
    prompts: tuple[mcp_types.Prompt, ...] = ()


@dataclass(frozen=True)
class Target:
    upstream: str
    name: str
    """The tool's or prompt's own name, the resource's own URI, or the template's own URI template."""


@dataclass
class View:
    tools: dict[str, tuple[Target, mcp_types.Tool]] = field(default_factory=dict)
    prompts: dict[str, tuple[Target, mcp_types.Prompt]] = field(default_factory=dict)
    resources: dict[str, tuple[Target, mcp_types.Resource]] = field(default_factory=dict)
    templates: list[tuple[Target, mcp_types.ResourceTemplate]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    """Upstream name -> why nothing of it could be listed."""
    _uri_of: dict[tuple[str, str], str] = field(default_factory=dict)

    def route_uri(self, uri: str) -> Target | None:
        """Where a ``resources/read`` of ``uri`` goes: a listed URI, a namespaced one, or a template match."""
        found = self.resources.get(uri)
        if found is not None:
            return found[0]
        namespaced = parse_namespaced_uri(uri)
        upstreams = {target.upstream for target, _ in self.resources.values()} | {
            target.upstream for target, _ in self.templates
        }
        if namespaced is not None and namespaced[0] in upstreams:
            return Target(*namespaced)
        for target, _ in self.templates:
            try:
                if UriTemplate.parse(target.name).match(uri) is not None:
                    return Target(target.upstream, uri)
            except InvalidUriTemplate:
                continue
        return None

    def exposed_uri(self, upstream: str, uri: str) -> str:
        return self._uri_of.get((upstream, uri), uri)


Credential = Callable[[Body], Awaitable[ServerAuth]]
"""The last-hop credential a virtual server uses for one upstream (by its registry body)."""


@dataclass
class _Entry:
    listing: Listing
    fetched_at: float
    generation: int


class Catalog:
    def __init__(self, pool: UpstreamPool, ttl: float, listing_timeout: float) -> None:
        self.pool = pool
        self.ttl = ttl
        self.listing_timeout = listing_timeout
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._generation: dict[str, int] = {}
        self._locks: dict[tuple[str, str], anyio.Lock] = {}
        self.last_views: dict[str, View] = {}
        """The most recent view per virtual server, for synchronous lookups (tool schemas)."""
        self._merged: dict[str, tuple[Body, tuple[Listing, ...], View]] = {}
        """Merged views by virtual server, with the body and listings they were built from."""

    def invalidate(self, upstream: str) -> None:
        self._generation[upstream] = self._generation.get(upstream, 0) + 1

    def _fresh(self, upstream: str, entry: _Entry | None) -> bool:
        return (
            entry is not None
            and entry.generation == self._generation.get(upstream, 0)
            and anyio.current_time() - entry.fetched_at < self.ttl
        )

    async def listing(self, upstream: str, auth: ServerAuth) -> Listing:
        key = (upstream, auth.credential_id or "")
        entry = self._entries.get(key)
        if self._fresh(upstream, entry):
            assert entry is not None
            return entry.listing
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            entry = self._entries.get(key)
            if self._fresh(upstream, entry):
                assert entry is not None
                return entry.listing
            generation = self._generation.get(upstream, 0)
            try:
                listing = await self.pool.use(upstream, auth.headers, _fetch, self.listing_timeout)
            except UpstreamUnavailable:
                if entry is not None:
                    return entry.listing
                raise
            except MCPError as exc:
                raise UpstreamUnavailable(f"it refused to list its offerings: {exc}") from None
            except MessageTooLarge as exc:
                raise UpstreamUnavailable(f"its listing is too large: {exc}") from None
            self._entries[key] = _Entry(listing, anyio.current_time(), generation)
            return listing

    async def view(self, virtual_server: Body, bodies: dict[str, Body], credential: Credential) -> View:
        """The merged offer of ``virtual_server``; ``bodies`` are the registry's upstream documents."""
        if (unchanged := self._cached_view(virtual_server, bodies)) is not None:
            return unchanged
        selections = virtual_server["servers"]
        listings: dict[str, Listing] = {}
        view = View()

        async def load(name: str) -> None:
            body = bodies.get(name)
            if body is None:
                view.unavailable[name] = "it is not registered"
                return
            try:
                listings[name] = await self.listing(name, await credential(body))
            except UpstreamUnavailable as exc:
                view.unavailable[name] = str(exc)

        async with anyio.create_task_group() as tasks:
            for selection in selections:
                tasks.start_soon(load, selection["server"])

        used = tuple(
            listings[selection["server"]] for selection in selections if selection["server"] in listings
        )
        if not view.unavailable and (reused := self._reuse(virtual_server, used)) is not None:
            return reused

        tools: list[tuple[str, mcp_types.Tool]] = []
        prompts: list[tuple[str, mcp_types.Prompt]] = []
        resources: list[tuple[str, mcp_types.Resource]] = []
        templates: list[tuple[str, mcp_types.ResourceTemplate]] = []
        for selection in selections:
            name = selection["server"]
            listing = listings.get(name)
            if listing is None:
                continue
            globs = selection["tools"]
            tools += [
                (name, tool)
                for tool in listing.tools
                if any(fnmatch.fnmatchcase(tool.name, g) for g in globs)
            ]
            if selection["prompts"]:
                prompts += [(name, prompt) for prompt in listing.prompts]
            if selection["resources"]:
                resources += [(name, resource) for resource in listing.resources]
                templates += [(name, template) for template in listing.templates]

        tool_names = exposed_names((server, tool.name) for server, tool in tools)
        for server, tool in tools:
            exposed = tool_names[(server, tool.name)]
            view.tools[exposed] = (Target(server, tool.name), tool.model_copy(update={"name": exposed}))
        prompt_names = exposed_names((server, prompt.name) for server, prompt in prompts)
        for server, prompt in prompts:
            exposed = prompt_names[(server, prompt.name)]
            view.prompts[exposed] = (Target(server, prompt.name), prompt.model_copy(update={"name": exposed}))
        uris = exposed_uris((server, resource.uri) for server, resource in resources)
        resource_names = exposed_names((server, resource.name) for server, resource in resources)
        for server, resource in resources:
            uri = uris[(server, resource.uri)]
            view._uri_of[(server, resource.uri)] = uri
            update = {"uri": uri, "name": resource_names[(server, resource.name)]}
            view.resources[uri] = (Target(server, resource.uri), resource.model_copy(update=update))
        template_names = exposed_names((server, template.name) for server, template in templates)
        template_uris = exposed_templates((server, template.uri_template) for server, template in templates)
        for server, template in templates:
            update = {
                "name": template_names[(server, template.name)],
                "uri_template": template_uris[(server, template.uri_template)],
            }
            view.templates.append((Target(server, template.uri_template), template.model_copy(update=update)))
        self.last_views[virtual_server["name"]] = view
        if view.unavailable:
            self._merged.pop(virtual_server["name"], None)
        else:
            self._merged[virtual_server["name"]] = (virtual_server, used, view)
        return view

    def _cached_view(self, virtual_server: Body, bodies: dict[str, Body]) -> View | None:
        """The merged view, without a task group or any await, when nothing it was built from changed.

        Credentials are not looked up here: a listing is cached per credential, so this
        only answers when every selected upstream has exactly one fresh listing and it is
        the one the view was built from (any second credential takes the full path).
        """
        used = []
        for selection in virtual_server["servers"]:
            name = selection["server"]
            if name not in bodies:
                return None
            entries = [entry for (upstream, _), entry in self._entries.items() if upstream == name]
            if len(entries) != 1 or not self._fresh(name, entries[0]):
                return None
            used.append(entries[0].listing)
        return self._reuse(virtual_server, tuple(used))

    def _reuse(self, virtual_server: Body, used: tuple[Listing, ...]) -> View | None:
        """The merged view, if it was built from this selection and these very listing objects
        (a ``list_changed``, registry change or expiry makes new ones)."""
        cached = self._merged.get(virtual_server["name"])
        if cached is None or cached[0] != virtual_server or len(cached[1]) != len(used):
            return None
        if any(old is not new for old, new in zip(cached[1], used, strict=True)):
            return None
        self.last_views[virtual_server["name"]] = cached[2]
        return cached[2]

    def forget_view(self, virtual_server: str) -> None:
        self.last_views.pop(virtual_server, None)
        self._merged.pop(virtual_server, None)


async def _fetch(client: Client) -> Listing:
    """Everything an upstream offers, in one connection; lists it lacks are empty."""
    capabilities = client.server_capabilities
    tools: list[mcp_types.Tool] = []
    resources: list[mcp_types.Resource] = []
    templates: list[mcp_types.ResourceTemplate] = []
    prompts: list[mcp_types.Prompt] = []
    if capabilities.tools is not None:
        cursor: str | None = None
        for _ in range(PAGE_CAP):
            page = await client.list_tools(cursor=cursor)
            tools += page.tools
            if not (cursor := page.next_cursor):
                break
    if capabilities.resources is not None:
        cursor = None
        for _ in range(PAGE_CAP):
            resource_page = await client.list_resources(cursor=cursor)
            resources += resource_page.resources
            if not (cursor := resource_page.next_cursor):
                break
        templates = await _optional(_templates(client))
    if capabilities.prompts is not None:
        cursor = None
        for _ in range(PAGE_CAP):
            prompt_page = await client.list_prompts(cursor=cursor)
            prompts += prompt_page.prompts
            if not (cursor := prompt_page.next_cursor):
                break
    return Listing(tuple(tools), tuple(resources), tuple(templates), tuple(prompts))


async def _templates(client: Client) -> list[mcp_types.ResourceTemplate]:
    found: list[mcp_types.ResourceTemplate] = []
    cursor: str | None = None
    for _ in range(PAGE_CAP):
        page = await client.list_resource_templates(cursor=cursor)
        found += page.resource_templates
        if not (cursor := page.next_cursor):
            break
    return found


async def _optional(pending: Awaitable[list[mcp_types.ResourceTemplate]]) -> list[mcp_types.ResourceTemplate]:
    try:
        return await pending
    except MCPError as exc:
        if exc.code == mcp_types.METHOD_NOT_FOUND:
            return []
        raise
