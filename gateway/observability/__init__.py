"""Seeing what the gateway did: Prometheus metrics, OpenTelemetry traces, and the four
figures (insights) computed from the session log."""
