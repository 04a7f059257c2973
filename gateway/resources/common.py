"""Lookups and lifecycle steps every resource kind shares."""

from __future__ import annotations

from typing import Any

from gateway import ids
from gateway.errors import NotFound
from gateway.store.base import Body, Mutation, Store


async def fetch(store: Store, kind: str, resource_id: str) -> Body:
    body = await store.get(kind, resource_id)
    if body is None:
        raise NotFound(kind, resource_id)
    return body


def _mark_archived(current: Body) -> Body:
    if current.get("archived_at"):
        return current
    moment = ids.timestamp()
    return {**current, "archived_at": moment, "updated_at": moment}


async def archive(store: Store, kind: str, resource_id: str) -> Body:
    """Idempotent: archiving twice keeps the first ``archived_at``."""
    body = await store.update(kind, resource_id, _mark_archived)
    if body is None:
        raise NotFound(kind, resource_id)
    return body


def with_field(name: str, value: Any) -> Mutation:
    """A mutation that sets one field."""
    return lambda body: {**body, name: value}


def public(body: Body) -> Body:
    """The wire shape: fields starting with ``_`` are internal (secrets, paths, leases)."""
    return {key: value for key, value in body.items() if not key.startswith("_")}
