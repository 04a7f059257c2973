"""Tunnel request bodies and the wire shapes ``BetaTunnel`` and ``BetaTunnelToken``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from gateway.schemas.common import Strict

DisplayName = Annotated[str, Field(min_length=1, max_length=255)]


class TunnelCreate(Strict):
    display_name: DisplayName | None = None


class TunnelRotateToken(Strict):
    reason: Annotated[str, Field(max_length=1024)] | None = None
    """Free text, recorded for audit."""


def tunnel_body(tunnel_id: str, domain: str, display_name: str | None, created_at: str) -> dict[str, Any]:
    """The stored document is exactly the wire shape: no secret ever lives in it."""
    return {
        "type": "tunnel",
        "id": tunnel_id,
        "display_name": display_name,
        "domain": domain,
        "created_at": created_at,
        "archived_at": None,
    }


def token_body(token_id: str, token: str) -> dict[str, Any]:
    return {"type": "tunnel_token", "id": token_id, "tunnel_token": token}
