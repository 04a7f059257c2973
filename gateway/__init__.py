"""Tether gateway: the REST API, the append-only session log and the harness."""
