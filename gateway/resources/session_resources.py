"""A session's resources: uploaded files and repositories its sandbox gets at their mount paths.

They live in the session document itself (``resources``, the wire list the SDK reads on the
session), so adding one is a single atomic update that also checks the mount path is free.
A repository's token is sealed under the resource's id in the internal ``_resource_tokens``
map, which no rendering path shows; placing the resources in the sandbox is the harness's
(``gateway.tools.placement``), which asks ``token`` for it at the last moment.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from gateway import ids
from gateway.errors import InvalidRequest, NotFound
from gateway.resources import common, memory_stores, uploads
from gateway.schemas.session_resources import (
    MAX_MEMORY_STORES,
    MAX_RESOURCES,
    MEMORY_AREA,
    SESSION_AREA,
    WORKSPACE,
    FileResourceParams,
    GitHubRepositoryResourceParams,
    MemoryStoreResourceParams,
    ResourceAdd,
    check_mount_path,
    memory_slug,
)
from gateway.store.base import Body, Store
from gateway.tools.git_fetch import parse_repository_url
from gateway.tunnels.tokens import Sealer

SESSION_KIND = "session"
ID_PREFIX = "sesrsc"
TOKENS = "_resource_tokens"
"""Internal field of the session: resource id -> sealed repository token."""
DELETED_TYPE = "session_resource_deleted"

Params = FileResourceParams | GitHubRepositoryResourceParams | MemoryStoreResourceParams | ResourceAdd


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _check_free(path: str, taken: Sequence[Body]) -> None:
    for other in taken:
        if _overlaps(path, other["mount_path"]):
            raise InvalidRequest(
                f"mount_path {path!r} overlaps resource {other['id']} at {other['mount_path']!r}"
            )


async def _require_upload(store: Store, file_id: str) -> None:
    body = await store.get(uploads.KIND, file_id)
    if body is None:
        raise InvalidRequest(f"file {file_id!r} not found")
    if not uploads.is_upload(body):
        raise InvalidRequest(
            f"file {file_id!r} is a session output, not an uploaded file; upload it to use it"
        )
    if body.get("expires_at") and str(body["expires_at"]) <= ids.timestamp():
        raise InvalidRequest(f"file {file_id!r} has expired")


async def build(store: Store, sealer: Sealer | None, params: Params) -> tuple[Body, str | None]:
    """The wire body of a new resource and its sealed token (repositories given one)."""
    moment = ids.timestamp()
    resource_id = ids.new_id(ID_PREFIX)
    if isinstance(params, MemoryStoreResourceParams):
        return await _memory_store(store, params), None
    if isinstance(params, FileResourceParams | ResourceAdd):
        await _require_upload(store, params.file_id)
        path = params.mount_path or f"{SESSION_AREA}/uploads/{params.file_id}"
        body: Body = {"type": "file", "id": resource_id, "file_id": params.file_id, "mount_path": path}
        return {**body, "created_at": moment, "updated_at": moment}, None
    try:
        repository = parse_repository_url(params.url)
    except ValueError as exc:
        raise InvalidRequest(f"resources: url: {exc}") from None
    mount_path = params.mount_path
    if mount_path is None:
        try:
            mount_path = check_mount_path(f"{WORKSPACE}/{repository.name}")
        except ValueError as exc:
            raise InvalidRequest(f"resources: give a mount_path for {params.url!r}: {exc}") from None
    body = {
        "type": "github_repository",
        "id": resource_id,
        "url": params.url,
        "mount_path": mount_path,
        "checkout": params.checkout.model_dump() if params.checkout else None,
        "created_at": moment,
        "updated_at": moment,
    }
    token = params.authorization_token
    if not token:
        return body, None
    if sealer is None:  # a caller that takes no tokens (deployments refuse resources)
        raise InvalidRequest("resources: authorization_token cannot be taken here")
    return body, sealer.encrypt(token.encode(), resource_id)


async def _memory_store(store: Store, params: MemoryStoreResourceParams) -> Body:
    """The attachment, with the store's name and description as they are now (the wire says
    they are snapshotted); its ``mount_path`` is settled by ``build_all``."""
    found = await store.get(memory_stores.KIND, params.memory_store_id)
    if found is None:
        raise InvalidRequest(f"resources: memory store {params.memory_store_id!r} not found")
    if found.get("archived_at"):
        raise InvalidRequest(f"resources: memory store {params.memory_store_id} is archived")
    return {
        "type": "memory_store",
        "memory_store_id": found["id"],
        "access": params.access or "read_write",
        "name": found["name"],
        "description": found.get("description") or "",
        "instructions": params.instructions,
        "mount_path": None,
    }


def memory_attachments(session: Body) -> list[Body]:
    """The session's memory-store resources, in the order they were given."""
    return [r for r in session.get("resources") or [] if r["type"] == "memory_store"]


def _sort_key(resource: Body) -> tuple[str, str]:
    """Memory stores (attached at creation, with no id or time of their own) come first."""
    return resource.get("created_at") or "", resource.get("id") or resource.get("memory_store_id") or ""


async def build_all(
    store: Store, sealer: Sealer | None, params: Sequence[Params]
) -> tuple[list[Body], dict[str, str]]:
    """``sessions.create``'s resources: each built, the mount paths pairwise apart."""
    if len(params) > MAX_RESOURCES:
        raise InvalidRequest(f"resources: at most {MAX_RESOURCES} resources per session")
    built: list[Body] = []
    tokens: dict[str, str] = {}
    stores: list[str] = []
    for item in params:
        body, sealed = await build(store, sealer, item)
        if body["type"] == "memory_store":
            if body["memory_store_id"] in stores:
                raise InvalidRequest(f"resources: memory store {body['memory_store_id']} is given twice")
            if len(stores) >= MAX_MEMORY_STORES:
                raise InvalidRequest(f"resources: at most {MAX_MEMORY_STORES} memory stores per session")
            stores.append(body["memory_store_id"])
            taken = [r["mount_path"].rpartition("/")[2] for r in built if r["type"] == "memory_store"]
            body["mount_path"] = f"{MEMORY_AREA}/{memory_slug(body['name'], taken)}"
        _check_free(body["mount_path"], built)
        built.append(body)
        if sealed is not None:
            tokens[body["id"]] = sealed
    return built, tokens


async def add(store: Store, sealer: Sealer, session_id: str, params: ResourceAdd) -> Body:
    """Attach a file to a session that may be running: its sandbox gets it before its next tool call."""
    session = await common.fetch(store, SESSION_KIND, session_id)
    if session.get("archived_at"):
        raise InvalidRequest(f"session {session_id} is archived")
    body, _ = await build(store, sealer, params)

    def attach(current: Body) -> Body:
        resources = list(current.get("resources") or [])
        if len(resources) >= MAX_RESOURCES:
            raise InvalidRequest(f"a session has at most {MAX_RESOURCES} resources")
        _check_free(body["mount_path"], resources)
        return {**current, "resources": [*resources, body]}

    if await store.update(SESSION_KIND, session_id, attach) is None:
        raise NotFound(SESSION_KIND, session_id)
    return body


def find(session: Body, resource_id: str) -> Body:
    for resource in session.get("resources") or []:
        if resource.get("id") == resource_id:
            return dict(resource)
    raise NotFound("session resource", resource_id)


async def get(store: Store, session_id: str, resource_id: str) -> Body:
    return find(await common.fetch(store, SESSION_KIND, session_id), resource_id)


def _cursor(resource: Body) -> str:
    raw = "|".join(_sort_key(resource)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(cursor: str) -> tuple[str, str]:
    try:
        created_at, resource_id = (
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        )
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("page: not a cursor of this session's resources") from None
    return created_at, resource_id


def page(session: Body, limit: int | None, after: str | None) -> tuple[list[Body], str | None]:
    """Resources oldest first; a cursor names a position, not a resource, so it stays good
    when the resource it was made from is deleted meanwhile."""
    resources = sorted(session.get("resources") or [], key=_sort_key)
    if after is not None:
        position = _position(after)
        resources = [r for r in resources if _sort_key(r) > position]
    if limit is None or len(resources) <= limit:
        return resources, None
    chosen = resources[:limit]
    return chosen, _cursor(chosen[-1])


async def update_token(store: Store, sealer: Sealer, session_id: str, resource_id: str, token: str) -> Body:
    """Rotate a repository's token; a checkout not made yet uses the new one."""
    found: list[Body] = []

    def rotate(current: Body) -> Body:
        resource = find(current, resource_id)
        if resource["type"] != "github_repository":
            raise InvalidRequest("authorization_token: only github_repository resources take a token")
        resource["updated_at"] = ids.timestamp()
        found[:] = [resource]
        resources = [resource if r.get("id") == resource_id else r for r in current["resources"]]
        sealed = sealer.encrypt(token.encode(), resource_id)
        return {
            **current,
            "resources": resources,
            TOKENS: {**(current.get(TOKENS) or {}), resource_id: sealed},
        }

    if await store.update(SESSION_KIND, session_id, rotate) is None:
        raise NotFound(SESSION_KIND, session_id)
    return found[0]


async def delete(store: Store, session_id: str, resource_id: str) -> Body:
    """Detach a resource: no sandbox gets it from now on (one that has it keeps its copy)."""

    def detach(current: Body) -> Body:
        find(current, resource_id)
        tokens = {k: v for k, v in (current.get(TOKENS) or {}).items() if k != resource_id}
        resources = [r for r in current["resources"] if r.get("id") != resource_id]
        return {**current, "resources": resources, TOKENS: tokens}

    if await store.update(SESSION_KIND, session_id, detach) is None:
        raise NotFound(SESSION_KIND, session_id)
    return {"id": resource_id, "type": DELETED_TYPE}


def token(sealer: Sealer, session: Body, resource_id: str) -> str | None:
    """The repository's token, unsealed for the one fetch that needs it."""
    sealed: Any = (session.get(TOKENS) or {}).get(resource_id)
    return sealer.decrypt(str(sealed), resource_id).decode() if sealed else None
