"""Errors of the tunnel layer that callers outside it may see."""

from __future__ import annotations


class TunnelUnavailable(Exception):
    """No stream can be opened for this host; the message is safe to show to the model."""
