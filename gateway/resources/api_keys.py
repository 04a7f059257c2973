"""API keys with roles, kept as salted hashes: created, listed, renamed and revoked.

A key is ``tk1.<key id>.<secret>``: the id names the record, so a check is one lookup and one
constant-time comparison of ``sha256(salt + secret)``; the secret itself is never stored and
is shown once, by ``create``. A ``worker`` key is bound to one self-hosted environment (and
optionally its tunnel), so an on-prem host never holds a key that can read other sessions.
The wire shape follows the SDK's ``BetaAPIKey``, with Tether's ``role``, ``environment_id``,
``tunnel_id`` and ``last_used_at`` beside it.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gateway import ids
from gateway.errors import InvalidRequest, NotFound
from gateway.resources import common
from gateway.schemas.common import Strict
from gateway.store.base import Body, Page, Store

KIND = "api_key"
ID_PREFIX = "apikey"
TOKEN_PREFIX = "tk1"
ROLES = ("admin", "developer", "operator", "reader", "worker")
Role = Literal["admin", "developer", "operator", "reader", "worker"]
LAST_USED_GRANULARITY = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per key, not on every request."""
_SALT, _HASH = "_salt", "_hash"


class KeyCreate(Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    role: Role
    environment_id: str | None = None
    """Required for (and only for) a ``worker`` key: the self-hosted environment it serves."""
    tunnel_id: str | None = None
    """A worker key may also read this one tunnel (``tether tunnel --tunnel-id``)."""
    expires_at: datetime | None = None
    allowed_ips: Annotated[list[str], Field(max_length=64)] | None = None
    """Address ranges (CIDR) requests with this key must come from; None: anywhere."""
    agent_ids: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=64)] | None
    ) = None
    """The only agents this key may start sessions of and change (a CI job's key); None: any."""

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, ranges: list[str] | None) -> list[str] | None:
        if ranges is None:
            return None
        if not ranges:
            raise ValueError("give at least one range, or leave allowed_ips out")
        try:
            return [str(ipaddress.ip_network(entry, strict=False)) for entry in ranges]
        except ValueError as exc:
            raise ValueError(f"not an address range: {exc}") from None

    @model_validator(mode="after")
    def _scoped_only_for_workers(self) -> KeyCreate:
        if self.role == "worker" and not self.environment_id:
            raise ValueError("environment_id: a worker key needs the self-hosted environment it serves")
        if self.role != "worker" and (self.environment_id or self.tunnel_id):
            raise ValueError("environment_id and tunnel_id apply only to worker keys")
        if self.agent_ids is not None and self.role in ("admin", "worker"):
            raise ValueError(f"agent_ids: {self.role} keys cannot be limited to agents")
        if self.expires_at is not None:
            if self.expires_at.tzinfo is None:
                raise ValueError("expires_at: must carry a time zone (RFC 3339)")
            if self.expires_at <= datetime.now(UTC):
                raise ValueError("expires_at: must be in the future")
        return self


class KeyUpdate(Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    status: Literal["active", "archived", "inactive"] | None = None


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a configured key is ``admin`` with no ``key_id``."""

    role: Role
    key_id: str | None = None
    environment_id: str | None = None
    tunnel_id: str | None = None
    agent_ids: frozenset[str] | None = None


ADMIN = Principal("admin")


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def status_of(body: Body, now: datetime | None = None) -> str:
    expires = body.get("expires_at")
    if (
        body["status"] == "active"
        and expires
        and datetime.fromisoformat(expires) <= (now or datetime.now(UTC))
    ):
        return "expired"
    return str(body["status"])


def render(body: Body) -> Body:
    return {**common.public(body), "status": status_of(body)}


async def create(store: Store, request: KeyCreate) -> tuple[Body, str]:
    """The stored key and its token, which the caller shows exactly once."""
    if request.environment_id is not None:
        environment = await store.get("environment", request.environment_id)
        if environment is None:
            raise InvalidRequest(f"environment_id: no environment {request.environment_id}")
        if environment.get("config", {}).get("type") != "self_hosted":
            raise InvalidRequest("environment_id: worker keys serve self_hosted environments only")
    if request.tunnel_id is not None and await store.get("tunnel", request.tunnel_id) is None:
        raise InvalidRequest(f"tunnel_id: no tunnel {request.tunnel_id}")
    key_id = ids.new_id(ID_PREFIX)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    body: Body = {
        "type": "api_key",
        "id": key_id,
        "name": request.name,
        "role": request.role,
        "environment_id": request.environment_id,
        "tunnel_id": request.tunnel_id,
        "status": "active",
        "scope": {"type": "organization"},
        "principal": None,
        "created_by": None,
        "created_at": ids.timestamp(),
        "expires_at": ids.timestamp(request.expires_at) if request.expires_at else None,
        "last_used_at": None,
        "allowed_ips": request.allowed_ips,
        "agent_ids": request.agent_ids,
        "partial_key_hint": f"{TOKEN_PREFIX}.{key_id}.{secret[:2]}...{secret[-4:]}",
        _SALT: salt.hex(),
        _HASH: _digest(salt, secret),
    }
    await store.insert(KIND, body)
    return body, f"{TOKEN_PREFIX}.{key_id}.{secret}"


def _from_allowed(body: Body, client: str | None) -> bool:
    ranges = body.get("allowed_ips")
    if not ranges:
        return True
    try:
        address = ipaddress.ip_address(client or "")
    except ValueError:
        return False  # no peer address (e.g. a Unix socket): a range cannot be satisfied
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # a dual-stack listener's view of an IPv4 peer
    return any(address in ipaddress.ip_network(entry) for entry in ranges)


async def authenticate(store: Store, token: str, client: str | None = None) -> Principal | None:
    """The principal a presented token acts as, or None (unknown, wrong, revoked, expired, or
    presented from outside the key's ``allowed_ips``). ``client`` is the peer's address."""
    prefix, _, rest = token.partition(".")
    key_id, _, secret = rest.partition(".")
    if prefix != TOKEN_PREFIX or not key_id.startswith(ID_PREFIX + "_") or not secret:
        return None
    body = await store.get(KIND, key_id)
    if body is None:
        return None
    presented = _digest(bytes.fromhex(body[_SALT]), secret)
    if not hmac.compare_digest(presented, body[_HASH]) or status_of(body) != "active":
        return None
    if not _from_allowed(body, client):
        return None
    await _touch(store, body)
    agents = body.get("agent_ids")
    return Principal(
        body["role"],
        key_id,
        body.get("environment_id"),
        body.get("tunnel_id"),
        frozenset(agents) if agents is not None else None,
    )


async def _touch(store: Store, body: Body) -> None:
    now = datetime.now(UTC)
    last = body.get("last_used_at")
    if last is None or now - datetime.fromisoformat(last) >= LAST_USED_GRANULARITY:
        await store.update(KIND, body["id"], common.with_field("last_used_at", ids.timestamp(now)))


async def get(store: Store, key_id: str) -> Body:
    body = await store.get(KIND, key_id)
    if body is None:
        raise NotFound("api_key", key_id)
    return body


async def update(store: Store, key_id: str, change: KeyUpdate) -> Body:
    fields = change.model_dump(exclude_none=True)
    body = await store.update(KIND, key_id, lambda current: {**current, **fields})
    if body is None:
        raise NotFound("api_key", key_id)
    return body


async def list_page(store: Store, cursor: int | None, limit: int, status: str | None) -> Page:
    equals = {"status": status} if status in ("active", "archived", "inactive") else None
    return await store.list_resources(KIND, cursor=cursor, limit=limit, include_archived=True, equals=equals)
