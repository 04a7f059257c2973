"""One line, with the fix, for each way a client command can fail."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    import anthropic


class CommandError(Exception):
    """A problem with the command's input, said in one line."""


def describe(exc: BaseException, gateway: str) -> str | None:
    """The one-line message for ``exc``, or None for a genuine bug (which should show its traceback)."""
    if isinstance(exc, CommandError):
        return str(exc)
    import anthropic  # only once something failed: the SDK is slow to import

    if isinstance(exc, anthropic.APIConnectionError):
        return _unreachable(exc, gateway)
    if isinstance(exc, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return (
            f"the gateway at {gateway} refused the API key (HTTP {exc.status_code}: {gateway_message(exc)}); "
            "pass the gateway's key with --api-key or TETHER_API_KEY"
        )
    if isinstance(exc, anthropic.NotFoundError):
        return f"{gateway_message(exc)} (HTTP 404 from {gateway}); check the id"
    if isinstance(exc, anthropic.APIStatusError):
        return f"the gateway at {gateway} answered HTTP {exc.status_code}: {gateway_message(exc)}"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    if isinstance(exc, json.JSONDecodeError | yaml.YAMLError):
        return "not valid JSON or YAML: " + " ".join(str(exc).split())
    return None


def _unreachable(exc: anthropic.APIConnectionError, gateway: str) -> str:
    import anthropic

    reason = "timed out" if isinstance(exc, anthropic.APITimeoutError) else _root_cause(exc)
    return (
        f"cannot reach the gateway at {gateway}: {reason} — is `tether gateway` running? "
        "set --gateway or TETHER_URL"
    )


def _root_cause(exc: BaseException) -> str:
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text:
        return "unknown host"
    return str(seen) or type(seen).__name__


def gateway_message(exc: anthropic.APIStatusError) -> str:
    """The ``error.message`` of the gateway's error body, else the SDK's summary."""
    body: Any = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(exc.message)
