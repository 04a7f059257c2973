"""Tool permission policies (see issue 6)."""
