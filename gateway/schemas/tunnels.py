"""Tunnel request bodies and the wire shapes ``BetaTunnel``, ``BetaTunnelToken`` and
``BetaTunnelCertificate``."""

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


class TunnelCertificateCreate(Strict):
    ca_certificate_pem: str
    """One PEM X.509 CA certificate; its checks (size, no key, CA, expiry) are in
    ``gateway.resources.tunnel_certificates`` so each refusal can name its reason."""


def certificate_body(
    certificate_id: str, tunnel_id: str, fingerprint: str, created_at: str, expires_at: str | None
) -> dict[str, Any]:
    """Exactly ``BetaTunnelCertificate``; the stored document adds the private ``_pem``."""
    return {
        "type": "tunnel_certificate",
        "id": certificate_id,
        "tunnel_id": tunnel_id,
        "fingerprint": fingerprint,
        "created_at": created_at,
        "expires_at": expires_at,
        "archived_at": None,
    }
