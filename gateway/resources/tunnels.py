"""Tunnels: a domain routed to on-prem MCP servers, and the connector token for its agents.

Two documents per tunnel: the public ``tunnel`` (exactly ``BetaTunnel``) and a private
``tunnel_token`` holding the token's digest and its sealed copy, so no rendering path can
ever leak a secret. Rotation replaces the digest in one atomic update: from that commit on
the old token authenticates nothing (the hub also drops agents connected with it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway import ids
from gateway.errors import InvalidRequest, NotFound
from gateway.resources import common, tunnel_certificates
from gateway.schemas.tunnels import TunnelCreate, token_body, tunnel_body
from gateway.store.base import Body, Store
from gateway.tunnels import addressing, tokens

log = logging.getLogger("tether.tunnels")

KIND = "tunnel"
TOKEN_KIND = "tunnel_token"
ID_PREFIX = "tnl"


class TokenRefused(Exception):
    """A connector token that authenticates nothing (``archived``: its tunnel was archived)."""

    def __init__(self, message: str, archived: bool = False) -> None:
        super().__init__(message)
        self.archived = archived


@dataclass(frozen=True)
class Credential:
    """What a valid connector token proves: this tunnel, with this token version."""

    tunnel: Body
    token_id: str


async def create(store: Store, sealer: tokens.Sealer, request: TunnelCreate, base_domain: str) -> Body:
    tunnel_id = ids.new_id(ID_PREFIX)
    moment = ids.timestamp()
    domain = await _unused_domain(store, base_domain)
    # The token document goes first: a crash in between leaves an orphan that authenticates
    # nothing (its tunnel does not exist), never a tunnel without a token.
    await store.insert(TOKEN_KIND, _token_document(tunnel_id, moment, sealer, tokens.new_token()))
    body = tunnel_body(tunnel_id, domain, request.display_name, moment)
    await store.insert(KIND, body)
    log.info("tunnel %s created for %s", tunnel_id, domain)
    return body


async def _unused_domain(store: Store, base_domain: str) -> str:
    """Domains are never reused, archived tunnels included."""
    for _ in range(8):
        domain = addressing.new_domain(base_domain)
        taken = await store.list_resources(
            KIND, cursor=None, limit=1, include_archived=True, equals={"domain": domain}
        )
        if not taken.items:
            return domain
    raise RuntimeError("could not allocate an unused tunnel domain")


def _token_key(tunnel_id: str) -> str:
    """Resource ids are unique across kinds, so the private document gets its own."""
    return f"{tunnel_id}.token"


def _token_document(tunnel_id: str, moment: str, sealer: tokens.Sealer, token: str) -> Body:
    token_id = tokens.new_token_id()
    return {
        "id": _token_key(tunnel_id),
        "tunnel_id": tunnel_id,
        "created_at": moment,
        "archived_at": None,
        "token_id": token_id,
        "sha256": tokens.digest(token),
        "sealed": sealer.encrypt(token.encode(), tunnel_id),
        "rotated_at": None,
        "rotation_reason": None,
    }


async def get(store: Store, tunnel_id: str) -> Body:
    return await common.fetch(store, KIND, tunnel_id)


async def find_by_domain(store: Store, domain: str) -> Body | None:
    page = await store.list_resources(
        KIND, cursor=None, limit=1, include_archived=True, equals={"domain": domain}
    )
    return page.items[0] if page.items else None


async def archive(store: Store, tunnel_id: str) -> Body:
    """Irreversible and idempotent (a repeat returns the record unchanged); the token is
    invalidated and its sealed copy destroyed, and its certificates are archived with the same
    ``archived_at``. The digest stays, so an agent still using the token learns the tunnel was
    archived rather than that its token is unknown."""
    moment = ids.timestamp()

    def mark(current: Body) -> Body:
        return current if current.get("archived_at") else {**current, "archived_at": moment}

    body = await store.update(KIND, tunnel_id, mark)
    if body is None:
        raise NotFound(KIND, tunnel_id)

    def retire(current: Body) -> Body:
        return {**current, "archived_at": current["archived_at"] or body["archived_at"], "sealed": None}

    await store.update(TOKEN_KIND, _token_key(tunnel_id), retire)
    await tunnel_certificates.archive_all(store, tunnel_id, body["archived_at"])
    log.info("tunnel %s archived", tunnel_id)
    return body


async def reveal_token(store: Store, sealer: tokens.Sealer, tunnel_id: str) -> Body:
    document = await _live_token(store, tunnel_id)
    token = sealer.decrypt(document["sealed"], tunnel_id).decode()
    return token_body(document["token_id"], token)


async def rotate_token(store: Store, sealer: tokens.Sealer, tunnel_id: str, reason: str | None) -> Body:
    await _live_token(store, tunnel_id)
    token = tokens.new_token()

    def rotate(current: Body) -> Body:
        if current.get("archived_at"):
            raise InvalidRequest(f"tunnel {tunnel_id} is archived; its token cannot be rotated")
        fresh = _token_document(tunnel_id, current["created_at"], sealer, token)
        return {**fresh, "rotated_at": ids.timestamp(), "rotation_reason": reason}

    document = await store.update(TOKEN_KIND, _token_key(tunnel_id), rotate)
    if document is None:
        raise NotFound(KIND, tunnel_id)
    log.info("tunnel %s: connector token rotated (reason: %r)", tunnel_id, reason)
    return token_body(document["token_id"], token)


async def _live_token(store: Store, tunnel_id: str) -> Body:
    tunnel = await get(store, tunnel_id)
    if tunnel.get("archived_at"):
        raise InvalidRequest(f"tunnel {tunnel_id} is archived; its token was invalidated")
    document = await store.get(TOKEN_KIND, _token_key(tunnel_id))
    if document is None or not document.get("sealed"):
        raise NotFound(KIND, tunnel_id)
    return document


async def authenticate(store: Store, token: str) -> Credential:
    """The tunnel a connector token belongs to; ``TokenRefused`` for unknown, rotated or
    archived tokens (the message is safe to send back; it never echoes the token)."""
    if not token.startswith(tokens.TOKEN_PREFIX):
        raise TokenRefused("not a tunnel token")
    token_digest = tokens.digest(token)
    page = await store.list_resources(
        TOKEN_KIND, cursor=None, limit=1, include_archived=True, equals={"sha256": token_digest}
    )
    if not page.items or not tokens.same_digest(page.items[0]["sha256"], token_digest):
        raise TokenRefused("unknown or rotated tunnel token")
    document = page.items[0]
    tunnel = await store.get(KIND, document["tunnel_id"])
    if tunnel is None:
        raise TokenRefused("unknown or rotated tunnel token")
    if tunnel.get("archived_at") or document.get("archived_at"):
        raise TokenRefused(f"tunnel {tunnel['id']} is archived", archived=True)
    return Credential(tunnel, document["token_id"])


async def current_token_id(store: Store, tunnel_id: str) -> str | None:
    """The live token version, or None once the tunnel is archived or gone."""
    document = await store.get(TOKEN_KIND, _token_key(tunnel_id))
    if document is None or document.get("archived_at"):
        return None
    token_id: str = document["token_id"]
    return token_id
