"""Outbound WebSocket tunnel agent (see issue 4)."""
