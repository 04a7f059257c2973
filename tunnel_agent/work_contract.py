"""What a self-hosted worker writes on a work item, and how the gateway reads it back.

The worker (``tunnel_agent.worker``) starts a sandbox on-prem for a session, exposes it as a
dynamic tunnel route, and records where the gateway should send the session's agent-toolset
calls in the work item's metadata. The gateway (``gateway.tools.sandbox_plan``) imports these
names from here, so both ends agree on one spelling.
"""

from __future__ import annotations

import hashlib
import re

SANDBOX_URL = "sandbox_url"
"""``http://<route>.<tunnel domain>/mcp``: the session's sandbox, reached through the tunnel."""
SANDBOX_ERROR = "sandbox_error"
"""Why the worker could not (re)start the sandbox; present only while ``sandbox_url`` is not."""
WORKER_ID = "worker_id"
"""The agent id of the worker holding the item (for operators reading ``work.list``)."""

ROUTE_PREFIX = "sbx-"
_NOT_DNS = re.compile(r"[^a-z0-9]+")


def route_name(work_id: str) -> str:
    """A DNS label for a work item's sandbox route: ``sbx-work-3kq...-<hash>``.

    Host names are case-insensitive but ids are base62, so the label keeps a readable,
    lower-cased form of the id plus a digest of the exact id: two ids that differ only in
    case still get different routes. Always 63 characters or fewer.
    """
    readable = _NOT_DNS.sub("-", work_id.lower()).strip("-")[:40]
    digest = hashlib.sha256(work_id.encode()).hexdigest()[:10]
    return f"{ROUTE_PREFIX}{readable}-{digest}" if readable else f"{ROUTE_PREFIX}{digest}"


def sandbox_url(route: str, tunnel_domain: str) -> str:
    return f"http://{route}.{tunnel_domain}/mcp"
