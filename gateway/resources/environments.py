"""Environments: where a session's tools run (``cloud`` sandbox here, ``self_hosted`` on-prem)."""

from __future__ import annotations

from gateway import ids
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.resources import common
from gateway.schemas.common import apply_metadata_patch
from gateway.schemas.environments import EnvironmentCreate, EnvironmentUpdate, resolve_config
from gateway.store.base import Body, Store

KIND = "environment"


async def create(store: Store, request: EnvironmentCreate, environment_id: str | None = None) -> Body:
    """``environment_id`` is given by the gateway for an environment of its own (dreams')."""
    moment = ids.timestamp()
    body: Body = {
        "type": "environment",
        "id": environment_id or ids.new_id(ids.ENVIRONMENT),
        "name": request.name,
        "description": request.description,
        "config": resolve_config(request.config),
        "metadata": request.metadata,
        "scope": request.scope or "organization",
        "created_at": moment,
        "updated_at": moment,
        "archived_at": None,
    }
    await store.insert(KIND, body)
    return body


async def get(store: Store, environment_id: str) -> Body:
    return await common.fetch(store, KIND, environment_id)


async def update(store: Store, environment_id: str, request: EnvironmentUpdate) -> Body:
    def apply(current: Body) -> Body:
        if current.get("archived_at"):
            raise InvalidRequest(f"environment {environment_id} is archived and cannot be updated")
        updated = dict(current)
        fields = request.model_fields_set
        if "name" in fields:
            if request.name is None:
                raise InvalidRequest("name: may not be null")
            updated["name"] = request.name
        if "description" in fields:
            updated["description"] = request.description
        if "config" in fields and request.config is not None:
            updated["config"] = resolve_config(request.config)
        if "metadata" in fields:
            updated["metadata"] = apply_metadata_patch(current["metadata"], request.metadata or {})
        if "scope" in fields and request.scope is not None:
            updated["scope"] = request.scope
        if updated != current:
            updated["updated_at"] = ids.timestamp()
        return updated

    body = await store.update(KIND, environment_id, apply)
    if body is None:
        raise NotFound("environment", environment_id)
    return body


async def archive(store: Store, environment_id: str) -> Body:
    return await common.archive(store, KIND, environment_id)


async def delete(store: Store, environment_id: str) -> Body:
    in_use = await store.list_resources(
        "session", cursor=None, limit=1, include_archived=True, equals={"environment_id": environment_id}
    )
    if in_use.items:
        raise Conflict(f"environment {environment_id} is used by sessions; archive it instead")
    if not await store.delete(KIND, environment_id):
        raise NotFound("environment", environment_id)
    return {"type": "environment_deleted", "id": environment_id}
