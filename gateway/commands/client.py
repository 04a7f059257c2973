"""Shared plumbing of the client commands: connection flags, the SDK client, and the wrapper
that turns every failure into one line with the fix and a non-zero exit status."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import anthropic

from gateway.commands.errors import CommandError, describe

DEFAULT_GATEWAY = "http://127.0.0.1:8420"

Handler = Callable[[argparse.Namespace, "anthropic.Anthropic"], int]


def connection_flags(parser: argparse.ArgumentParser) -> None:
    """``--gateway`` and ``--api-key``, defaulting to ``TETHER_URL`` and ``TETHER_API_KEY``."""
    parser.add_argument(
        "--gateway",
        default=os.environ.get("TETHER_URL") or DEFAULT_GATEWAY,
        help=f"gateway URL (default: TETHER_URL or {DEFAULT_GATEWAY})",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TETHER_API_KEY") or None,
        help="the gateway's API key (default: TETHER_API_KEY)",
    )


def make_client(gateway: str, api_key: str, *, retries: int = 0) -> anthropic.Anthropic:
    """No retries by default: an operator wants the error now, not after three back-offs."""
    import anthropic  # here, not at import: the SDK takes seconds to import

    return anthropic.Anthropic(base_url=gateway, api_key=api_key, max_retries=retries, timeout=60)


def fail(message: str) -> int:
    print(f"tether: {message}", file=sys.stderr)
    return 1


def run(handler: Handler) -> Callable[[argparse.Namespace], None]:
    """Wrap a handler as an argparse ``func``: every failure is one line on stderr, status 1."""

    def call(args: argparse.Namespace) -> None:
        sys.exit(guarded(args, lambda: _with_client(handler, args)))

    return call


def _with_client(handler: Handler, args: argparse.Namespace) -> int:
    if not args.api_key:
        raise CommandError("an API key is needed: pass --api-key or set TETHER_API_KEY")
    with make_client(args.gateway, args.api_key) as client:
        return handler(args, client)


def guarded(args: argparse.Namespace, body: Callable[[], int]) -> int:
    """Run ``body``; an error of the gateway, the network or the input becomes one line."""
    try:
        return body()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 0  # `tether sessions export ... | head` is fine
    except Exception as exc:
        message = describe(exc, getattr(args, "gateway", DEFAULT_GATEWAY))
        if message is None:
            raise
        return fail(message)


def _quiet_stdout() -> None:
    """After a closed pipe, point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def raw(response: Any) -> Any:
    """The gateway's JSON as sent (not re-serialised SDK models), so nothing Tether adds is lost."""
    return response.http_response.json()
