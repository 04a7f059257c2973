"""Errors of the tunnel layer that callers outside it may see."""

from __future__ import annotations


class TunnelUnavailable(Exception):
    """No stream can be opened for this host; the message is safe to show to the model."""


class TrustWithdrawn(Exception):
    """Every CA certificate the tunnel had is archived: it carries no MCP traffic until a new
    one is added (``resources.tunnel_certificates.trusted_pems``)."""
