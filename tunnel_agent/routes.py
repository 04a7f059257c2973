"""Routes added while the agent runs: one per local sandbox the worker started.

Each dynamic route points at ``127.0.0.1:<port>`` and carries its own allow-list of exactly
that address and port, and the headers the agent adds on the last hop (the sandbox's bearer
token: they replace any header of the same name the gateway sent). The operator's allow-list
is never widened: a static route cannot reach a sandbox port, and a dynamic route can reach
nothing but its own loopback port. A dynamic name never shadows a route from the config file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tunnel_agent.allowlist import AllowList
from tunnel_agent.config import Route

LOOPBACK = "127.0.0.1"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class DynamicRoute:
    route: Route
    allow: AllowList


class DynamicRoutes:
    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._reserved = frozenset(reserved)
        self._routes: dict[str, DynamicRoute] = {}

    def set_loopback(self, subdomain: str, port: int, headers: Mapping[str, str] | None = None) -> None:
        """Point ``subdomain`` at a loopback port, replacing any previous port and headers (a restart)."""
        if not _LABEL.match(subdomain):
            raise ValueError(f"dynamic route {subdomain!r} is not a lower-case DNS label")
        if subdomain in self._reserved:
            raise ValueError(f"dynamic route {subdomain!r} would shadow a configured route")
        if not 1 <= port <= 65535:
            raise ValueError(f"dynamic route {subdomain!r}: bad port {port}")
        added = {name.lower(): value for name, value in (headers or {}).items()}
        if any("\r" in value or "\n" in value for value in added.values()):
            raise ValueError(f"dynamic route {subdomain!r}: a header value contains a line break")
        route = Route(subdomain, "http", LOOPBACK, port, "", added)
        self._routes[subdomain] = DynamicRoute(route, AllowList.parse([f"{LOOPBACK}:{port}"]))

    def remove(self, subdomain: str) -> None:
        self._routes.pop(subdomain, None)

    def get(self, subdomain: str) -> DynamicRoute | None:
        return self._routes.get(subdomain)

    def names(self) -> list[str]:
        return sorted(self._routes)
