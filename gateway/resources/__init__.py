"""Domain operations on agents, environments and sessions (no HTTP here)."""
