"""Upstream MCP servers and virtual servers: documents in the Store, and a snapshot of them.

The Store is the source of truth (so every replica sees the same registry); each process
keeps a snapshot it re-reads periodically and after its own writes, and tells listeners
which names changed so supervisors, caches and connected clients can follow.

Names are unique per kind and immutable (they address ``/mcp/{name}`` and prefix tool
names). Uniqueness is checked under a process-local lock: two replicas creating the same
name at the same instant could both succeed (documented limitation).

Stdio ``env`` values are encrypted with the vault keyring (the server id is the associated
data) and never rendered; responses show the variable names only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import yaml

from gateway import ids
from gateway.api.bodies import validate
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.mcp_gateway.schemas import (
    McpServerCreate,
    McpServerUpdate,
    StdioTransport,
    VirtualServerCreate,
    VirtualServerUpdate,
)
from gateway.resources.vaults import require_usable
from gateway.schemas.common import apply_metadata_patch
from gateway.store.base import Body, Store, StoreUnavailable
from gateway.vault.keyring import KeyRing

log = logging.getLogger("tether.mcp_gateway")

SERVER = "mcp_server"
VIRTUAL_SERVER = "mcp_virtual_server"
SERVER_PREFIX = "mcpsrv"
VIRTUAL_SERVER_PREFIX = "mcpvs"
SEALED_ENV = "_sealed_env"
PAGE = 100


@dataclass(frozen=True)
class Changes:
    """Names whose documents were added, changed or removed since the last snapshot."""

    servers: frozenset[str] = frozenset()
    virtual_servers: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.servers or self.virtual_servers)


Listener = Callable[[Changes], Awaitable[None]]


def render(body: Body) -> Body:
    """The public shape: no ``_`` fields; a stdio transport lists env names, never values."""
    public = {key: value for key, value in body.items() if not key.startswith("_")}
    transport = public.get("transport")
    if isinstance(transport, dict) and transport.get("type") == "stdio":
        public["transport"] = {key: value for key, value in transport.items() if key != "env"}
        public["transport"]["env_names"] = sorted(transport.get("env_names", []))
    return public


@dataclass
class Snapshot:
    servers: dict[str, Body] = field(default_factory=dict)
    virtual_servers: dict[str, Body] = field(default_factory=dict)


class Registry:
    def __init__(self, store: Store, keyring: KeyRing) -> None:
        self.store = store
        self.keyring = keyring
        self.snapshot = Snapshot()
        self._listeners: list[Listener] = []
        self._write_lock = anyio.Lock()
        self._refresh_lock = anyio.Lock()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # Snapshot ------------------------------------------------------------------------

    async def refresh(self) -> Changes:
        """Re-read both kinds from the Store and notify listeners of what changed.

        Listeners run under the same lock, so they see changes one snapshot at a time and
        in order (a stdio server is never started by an old snapshot after a newer one
        removed it).
        """
        async with self._refresh_lock:
            servers = {body["name"]: body for body in await self._all(SERVER)}
            virtual = {body["name"]: body for body in await self._all(VIRTUAL_SERVER)}
            changes = Changes(
                _changed(self.snapshot.servers, servers), _changed(self.snapshot.virtual_servers, virtual)
            )
            self.snapshot = Snapshot(servers, virtual)
            if changes:
                for listener in self._listeners:
                    try:
                        await listener(changes)
                    except Exception:
                        log.exception("registry listener failed")
        return changes

    async def sync_forever(self, interval: float) -> None:
        """Pick up changes made through other replicas."""
        while True:
            await anyio.sleep(interval)
            try:
                await self.refresh()
            except StoreUnavailable as exc:
                log.warning("registry refresh skipped: %s", exc)
            except Exception:
                log.exception("registry refresh failed")

    async def _all(self, kind: str) -> list[Body]:
        items: list[Body] = []
        cursor: int | None = None
        while True:
            page = await self.store.list_resources(
                kind, cursor=cursor, limit=PAGE, include_archived=False, order="asc"
            )
            items += page.items
            if page.next_cursor is None:
                return items
            cursor = page.next_cursor

    def server(self, name: str) -> Body | None:
        return self.snapshot.servers.get(name)

    async def virtual_server(self, name: str) -> Body | None:
        """From the snapshot; on a miss, from the Store (it may be new on another replica)."""
        found = self.snapshot.virtual_servers.get(name)
        if found is None and await self._find(VIRTUAL_SERVER, name) is not None:
            await self.refresh()
            found = self.snapshot.virtual_servers.get(name)
        return found

    def stdio_env(self, body: Body) -> dict[str, str]:
        sealed = body.get(SEALED_ENV)
        if not sealed:
            return {}
        env: dict[str, str] = json.loads(self.keyring.decrypt(sealed, body["id"]))
        return env

    async def _find(self, kind: str, name: str) -> Body | None:
        page = await self.store.list_resources(
            kind, cursor=None, limit=1, include_archived=False, equals={"name": name}
        )
        return page.items[0] if page.items else None

    async def resolve(self, kind: str, key: str) -> Body:
        """By id, or by name (handy for operators and config files)."""
        body = await self.store.get(kind, key)
        if body is None:
            body = await self._find(kind, key)
        if body is None:
            raise NotFound(kind, key)
        return body

    # Upstream servers ----------------------------------------------------------------

    async def create_server(self, request: McpServerCreate, source: str = "api") -> Body:
        async with self._write_lock:
            if await self._find(SERVER, request.name) is not None:
                raise Conflict(f"an MCP server named {request.name!r} already exists")
            await require_usable(self.store, request.vault_ids)
            moment = ids.timestamp()
            body: Body = {
                "type": "mcp_server",
                "id": ids.new_id(SERVER_PREFIX),
                "name": request.name,
                "vault_ids": request.vault_ids,
                "timeout_seconds": request.timeout_seconds,
                "metadata": request.metadata,
                "source": source,
                "created_at": moment,
                "updated_at": moment,
                "archived_at": None,
            }
            self._set_transport(body, request.transport)
            await self.store.insert(SERVER, body)
        await self.refresh()
        return body

    def _set_transport(self, body: Body, transport: Any) -> None:
        public = transport.model_dump()
        if isinstance(transport, StdioTransport):
            env = public.pop("env")
            public["env_names"] = sorted(env)
            body[SEALED_ENV] = self.keyring.encrypt(json.dumps(env).encode(), body["id"]) if env else None
        else:
            body.pop(SEALED_ENV, None)
        body["transport"] = public

    async def update_server(self, key: str, request: McpServerUpdate) -> Body:
        current = await self.resolve(SERVER, key)
        if request.vault_ids:
            await require_usable(self.store, request.vault_ids)

        def apply(body: Body) -> Body:
            updated = dict(body)
            fields = request.model_fields_set
            if request.transport is not None:
                self._set_transport(updated, request.transport)
            if "vault_ids" in fields:
                updated["vault_ids"] = request.vault_ids or []
            if "timeout_seconds" in fields:
                updated["timeout_seconds"] = request.timeout_seconds
            if "metadata" in fields:
                updated["metadata"] = apply_metadata_patch(body["metadata"], request.metadata or {})
            if updated != body:
                updated["updated_at"] = ids.timestamp()
            return updated

        body = await self.store.update(SERVER, current["id"], apply)
        if body is None:
            raise NotFound(SERVER, key)
        await self.refresh()
        return body

    async def delete_server(self, key: str) -> Body:
        async with self._write_lock:
            current = await self.resolve(SERVER, key)
            users = sorted(
                body["name"]
                for body in await self._all(VIRTUAL_SERVER)
                if any(s["server"] == current["name"] for s in body["servers"])
            )
            if users:
                raise Conflict(
                    f"MCP server {current['name']!r} is used by virtual servers {', '.join(users)}; "
                    "remove it from them first"
                )
            await self.store.delete(SERVER, current["id"])
        await self.refresh()
        return {"id": current["id"], "type": "mcp_server_deleted"}

    # Virtual servers -----------------------------------------------------------------

    async def _check_selection(self, servers: Iterable[str]) -> None:
        missing = [name for name in servers if await self._find(SERVER, name) is None]
        if missing:
            raise InvalidRequest(f"servers: unknown MCP server {', '.join(repr(n) for n in missing)}")

    async def create_virtual_server(self, request: VirtualServerCreate, source: str = "api") -> Body:
        async with self._write_lock:
            if await self._find(VIRTUAL_SERVER, request.name) is not None:
                raise Conflict(f"a virtual server named {request.name!r} already exists")
            await self._check_selection(s.server for s in request.servers)
            await require_usable(self.store, request.vault_ids)
            moment = ids.timestamp()
            body: Body = {
                "type": "mcp_virtual_server",
                "id": ids.new_id(VIRTUAL_SERVER_PREFIX),
                **request.model_dump(mode="json"),
                "path": f"/mcp/{request.name}",
                "source": source,
                "created_at": moment,
                "updated_at": moment,
                "archived_at": None,
            }
            await self.store.insert(VIRTUAL_SERVER, body)
        await self.refresh()
        return body

    async def update_virtual_server(self, key: str, request: VirtualServerUpdate) -> Body:
        current = await self.resolve(VIRTUAL_SERVER, key)
        fields = request.model_fields_set
        if request.servers is not None:
            await self._check_selection(s.server for s in request.servers)
        if request.vault_ids:
            await require_usable(self.store, request.vault_ids)
        patch = request.model_dump(mode="json", include=fields - {"metadata"})
        if patch.get("servers", 0) is None or patch.get("permission_policy", 0) is None:
            raise InvalidRequest("servers and permission_policy may not be null")

        def apply(body: Body) -> Body:
            updated = {**body, **patch}
            if "metadata" in fields:
                updated["metadata"] = apply_metadata_patch(body["metadata"], request.metadata or {})
            if "vault_ids" in fields and updated["vault_ids"] is None:
                updated["vault_ids"] = []
            if "description" in fields and updated["description"] is None:
                updated["description"] = ""
            if updated != body:
                updated["updated_at"] = ids.timestamp()
            return updated

        body = await self.store.update(VIRTUAL_SERVER, current["id"], apply)
        if body is None:
            raise NotFound(VIRTUAL_SERVER, key)
        await self.refresh()
        return body

    async def delete_virtual_server(self, key: str) -> Body:
        current = await self.resolve(VIRTUAL_SERVER, key)
        await self.store.delete(VIRTUAL_SERVER, current["id"])
        await self.refresh()
        return {"id": current["id"], "type": "mcp_virtual_server_deleted"}

    # Config file ---------------------------------------------------------------------

    async def apply_config(self, path: Path) -> None:
        """Create or replace the file's upstreams and virtual servers (``source: config``).

        The file holds ``servers`` and ``virtual_servers`` lists shaped like the REST create
        bodies; JSON, or YAML for ``.yaml``/``.yml``. Entries are matched by name, so
        restarting with the same file changes nothing, and editing it updates in place.
        """
        text = await anyio.Path(path).read_text()
        try:
            data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        except (yaml.YAMLError, ValueError) as exc:
            raise InvalidRequest(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequest(f"{path}: must be an object with servers and virtual_servers")
        unknown = set(data) - {"servers", "virtual_servers"}
        if unknown:
            raise InvalidRequest(f"{path}: unknown keys {sorted(unknown)}")
        for raw in data.get("servers") or []:
            server = validate(McpServerCreate, raw)
            existing = await self._find(SERVER, server.name)
            if existing is None:
                await self.create_server(server, source="config")
            else:
                # Every field, so what the file no longer says is reset to its default.
                full = server.model_dump(exclude={"name"})
                await self.update_server(existing["id"], McpServerUpdate.model_validate(full))
        for raw in data.get("virtual_servers") or []:
            virtual = validate(VirtualServerCreate, raw)
            existing = await self._find(VIRTUAL_SERVER, virtual.name)
            if existing is None:
                await self.create_virtual_server(virtual, source="config")
            else:
                full = virtual.model_dump(exclude={"name"})
                await self.update_virtual_server(existing["id"], VirtualServerUpdate.model_validate(full))


def _changed(before: dict[str, Body], after: dict[str, Body]) -> frozenset[str]:
    names = set(before) | set(after)
    return frozenset(name for name in names if before.get(name) != after.get(name))
