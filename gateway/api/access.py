"""What each key role may call: a path-and-method rule per role, checked before routing.

Deny by default: a path no rule names is the ``admin`` role's alone (vaults, tunnels, MCP
servers, webhooks, keys, audit, metrics). An ``operator`` may also send only confirmations
and interrupts to a session, which ``require_event_types`` checks once the body is read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from starlette.requests import HTTPConnection

from gateway.errors import PermissionDenied
from gateway.resources.api_keys import ADMIN, Principal

PRINCIPAL = "tether.principal"
"""Where the key middleware leaves the caller's ``Principal`` in the ASGI scope's state."""
READS = frozenset({"GET", "HEAD"})
WHOAMI = "/v1/tether/whoami"
"""Every key may ask what it is (the tunnel agent refuses to run with an admin key)."""
_WORK = re.compile(r"^/v1/environments/(?P<environment>[^/]+)/work(?:/.*)?$")
_ENVIRONMENT = re.compile(r"^/v1/environments/(?P<environment>[^/]+)$")
_TUNNEL = re.compile(r"^/v1/tunnels/(?P<tunnel>[^/]+)$")
_AGENT = re.compile(r"^/v1/agents(?:/(?P<agent>[^/]+)(?:/.*)?)?$")
_SESSION_EVENTS = re.compile(r"^/v1/sessions/[^/]+/events$")
_SESSION_ARCHIVE = re.compile(r"^/v1/sessions/[^/]+/archive$")
_BUILDING = (
    "/v1/agents",
    "/v1/environments",
    "/v1/sessions",
    "/v1/files",
    "/v1/deployments",
    "/v1/deployment_runs",
    "/v1/skills",
    "/v1/memory_stores",
    "/v1/dreams",
)
"""The surfaces a ``developer`` builds with and a ``reader`` reads."""
OPERATOR_EVENTS = frozenset({"user.tool_confirmation", "user.interrupt"})


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def allows(principal: Principal, method: str, path: str) -> bool:
    role = principal.role
    if role == "admin" or (path == WHOAMI and method in READS):
        return True
    if role == "worker":
        return _worker_allows(principal, method, path)
    if _WORK.match(path):
        return False  # the work queue is for workers (and admins)
    if principal.agent_ids is not None and method not in READS and (agent := _AGENT.match(path)):
        return agent["agent"] in principal.agent_ids  # no new agents, and only its own changed
    if role == "developer":
        return _under(path, _BUILDING)
    if role == "reader":
        return method in READS and _under(path, _BUILDING)
    if role == "operator":
        if method in READS:
            return _under(path, ("/v1/sessions", "/v1/agents", "/v1/environments"))
        return method == "POST" and bool(_SESSION_EVENTS.match(path) or _SESSION_ARCHIVE.match(path))
    return False


def _worker_allows(principal: Principal, method: str, path: str) -> bool:
    if (work := _WORK.match(path)) is not None:
        return work["environment"] == principal.environment_id
    if method not in READS:
        return False
    if (environment := _ENVIRONMENT.match(path)) is not None:
        return environment["environment"] == principal.environment_id
    tunnel = _TUNNEL.match(path)
    return tunnel is not None and principal.tunnel_id is not None and tunnel["tunnel"] == principal.tunnel_id


def denial(principal: Principal, method: str, path: str) -> str:
    scope = f" for {principal.environment_id}" if principal.environment_id else ""
    return f"this API key's role ({principal.role}{scope}) does not allow {method} {path}"


def principal_of(connection: HTTPConnection) -> Principal:
    """The caller; requests that reached a handler without the key middleware act as admin."""
    found = connection.scope.get("state", {}).get(PRINCIPAL)
    return found if isinstance(found, Principal) else ADMIN


def require_agent(connection: HTTPConnection, agent_id: str) -> None:
    """A key limited to some agents starts sessions of those only."""
    principal = principal_of(connection)
    if principal.agent_ids is not None and agent_id not in principal.agent_ids:
        raise PermissionDenied(
            f"agent: this API key may start sessions of {', '.join(sorted(principal.agent_ids))} only"
        )


def require_vault_use(connection: HTTPConnection, vault_ids: Iterable[str] | None) -> None:
    """Attaching a vault lends a session its credentials (egress and MCP servers use them on the
    session's behalf), so only admin keys may, as only they may manage vaults."""
    principal = principal_of(connection)
    if vault_ids and principal.role != "admin":
        raise PermissionDenied(f"vault_ids: this API key's role ({principal.role}) may not attach vaults")


def require_event_types(connection: HTTPConnection, types: Iterable[str]) -> None:
    """An operator may answer confirmations and interrupt, nothing else."""
    principal = principal_of(connection)
    if principal.role != "operator":
        return
    refused = sorted(set(types) - OPERATOR_EVENTS)
    if refused:
        raise PermissionDenied(
            f"this API key's role (operator) may send only {', '.join(sorted(OPERATOR_EVENTS))} "
            f"events, not {', '.join(refused)}"
        )
