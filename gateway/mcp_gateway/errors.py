"""Why an upstream could not serve a request, in words safe to show a client.

Messages never carry credentials or stack traces: they name the upstream and the kind
of failure ("connection refused", "timed out after 5s", "circuit open ..."), which is
what a model or an operator needs to decide what to do next.
"""

from __future__ import annotations

from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

UNREACHABLE_CODES = frozenset({CONNECTION_CLOSED, REQUEST_TIMEOUT})
"""Errors the SDK (or the express lane's wire) makes up when no answer came: the upstream was
not reached, unlike an error it sent itself."""


class UpstreamUnavailable(Exception):
    """The upstream could not be reached, dropped the connection, or its circuit is open."""


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream did not answer within the call's timeout."""


def leaf(exc: BaseException) -> BaseException:
    """Exception groups (task groups, transports) unwrap to their first cause."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def describe(exc: BaseException) -> str:
    """One line for a client and the log."""
    exc = leaf(exc)
    name = type(exc).__name__
    if name == "ConnectError":
        return "connection refused"
    if "Timeout" in name:
        return "timed out"
    if name in ("RemoteProtocolError", "ReadError", "WriteError", "ClosedResourceError", "EndOfStream"):
        return "connection lost"
    if name == "HTTPStatusError":
        response = getattr(exc, "response", None)
        return f"HTTP {getattr(response, 'status_code', '?')}"
    text = str(exc) or name
    return text.splitlines()[0][:300]
