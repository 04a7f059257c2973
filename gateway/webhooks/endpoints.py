"""Webhook endpoints as store resources: where to deliver, which events, and the secret.

The secret is kept with the endpoint because every delivery must be signed with it; it is
returned once, by ``create``, and never rendered again. A URL must pass ``targets`` (no
internal addresses unless the operator allows them) to be registered.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from gateway import ids
from gateway.resources import common
from gateway.schemas.common import Metadata, Strict
from gateway.store.base import SESSION_STATUS_OF_EVENT, Body, Page, Store
from gateway.webhooks.signing import generate_secret
from gateway.webhooks.targets import WebhookTargets

KIND = "webhook_endpoint"
ID_PREFIX = "whep"
EVENT_TYPES = (*SESSION_STATUS_OF_EVENT, "span.outcome_evaluation_end")
"""What can be subscribed to: the session status changes, and outcome evaluations' verdicts."""
PAGE_SCAN = 100


class WebhookCreate(Strict):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    event_types: list[str] | None = None
    """Omitted or empty: all of ``EVENT_TYPES``."""
    description: Annotated[str, Field(max_length=512)] | None = None
    metadata: Metadata = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http:// or https:// URL")
        return url

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, types: list[str] | None) -> list[str] | None:
        for name in types or []:
            if name not in EVENT_TYPES:
                raise ValueError(f"{name!r} is not one of {', '.join(EVENT_TYPES)}")
        return sorted(set(types)) if types else None


def render(body: Body) -> Body:
    """The wire shape: everything but the secret."""
    return {key: value for key, value in body.items() if key != "secret"}


async def create(store: Store, request: WebhookCreate, targets: WebhookTargets) -> Body:
    """Returns the stored body, secret included: the caller shows it exactly once.

    Raises ``InvalidRequest`` if ``targets`` refuses the URL's host.
    """
    await targets.check_url(request.url)
    moment = ids.timestamp()
    body: Body = {
        "type": KIND,
        "id": ids.new_id(ID_PREFIX),
        "url": request.url,
        "event_types": request.event_types or list(EVENT_TYPES),
        "description": request.description,
        "metadata": request.metadata,
        "secret": generate_secret(),
        "created_at": moment,
        "updated_at": moment,
        "archived_at": None,
    }
    await store.insert(KIND, body)
    return body


async def get(store: Store, endpoint_id: str) -> Body:
    return await common.fetch(store, KIND, endpoint_id)


async def delete(store: Store, endpoint_id: str) -> None:
    await get(store, endpoint_id)
    await store.delete(KIND, endpoint_id)


async def list_page(store: Store, cursor: int | None, limit: int) -> Page:
    return await store.list_resources(KIND, cursor=cursor, limit=limit, include_archived=False, order="asc")


async def subscribed_to(store: Store, event_type: str) -> list[Body]:
    """Every endpoint (with its secret) that wants ``event_type``."""
    matching: list[Body] = []
    cursor: int | None = None
    while True:
        page = await list_page(store, cursor, PAGE_SCAN)
        matching += [body for body in page.items if event_type in body.get("event_types", ())]
        if page.next_cursor is None:
            return matching
        cursor = page.next_cursor
