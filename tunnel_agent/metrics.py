"""The agent's counters, rendered as Prometheus text for ``/metrics``.

Hand-rolled (a few counters and gauges) so the agent needs no metrics library on-prem.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


@dataclass
class Metric:
    name: str
    help: str
    kind: str = "counter"
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] = value

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in sorted(self.values.items()):
            rendered = ",".join(f'{key}="{_escape(item)}"' for key, item in labels)
            lines.append(f"{self.name}{{{rendered}}} {value:g}" if rendered else f"{self.name} {value:g}")
        if not self.values:
            lines.append(f"{self.name} 0")
        return lines


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class AgentMetrics:
    def __init__(self) -> None:
        self.connections = Metric("tether_tunnel_connections", "Tunnel connections currently up.", "gauge")
        self.connects = Metric("tether_tunnel_connects_total", "Tunnel connections established.")
        self.disconnects = Metric("tether_tunnel_disconnects_total", "Tunnel connections lost, by reason.")
        self.rejected = Metric(
            "tether_tunnel_auth_rejections_total", "Connections the gateway refused (token or tunnel)."
        )
        self.streams = Metric("tether_tunnel_streams_total", "Streams opened by the gateway, by route.")
        self.refused = Metric(
            "tether_tunnel_streams_refused_total", "Streams refused: unknown route or not allowed."
        )
        self.upstream_errors = Metric(
            "tether_tunnel_upstream_errors_total", "Allowed targets that could not be reached."
        )
        self.responses = Metric(
            "tether_tunnel_upstream_responses_total", "Upstream responses relayed, by route and status class."
        )
        self.rtt = Metric("tether_tunnel_ping_rtt_seconds", "Latest ping round trip, per slot.", "gauge")
        # Worker mode (--environment): local sandboxes for self-hosted sessions.
        self.sandboxes = Metric("tether_worker_sandboxes", "Local sandboxes running for held work.", "gauge")
        self.sandbox_starts = Metric(
            "tether_worker_sandbox_starts_total", "Sandbox starts, by outcome (started, restarted, failed)."
        )
        self.leases_ended = Metric(
            "tether_worker_leases_ended_total",
            "Work leases ended, by how (stopped, lost, rejected, released).",
        )

    @property
    def ready(self) -> bool:
        return sum(self.connections.values.values()) > 0

    def render(self) -> str:
        metrics = [
            self.connections,
            self.connects,
            self.disconnects,
            self.rejected,
            self.streams,
            self.refused,
            self.upstream_errors,
            self.responses,
            self.rtt,
            self.sandboxes,
            self.sandbox_starts,
            self.leases_ended,
        ]
        return "\n".join(line for metric in metrics for line in metric.render()) + "\n"
