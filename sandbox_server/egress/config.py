"""Egress settings of one sandbox and the ``tether sandbox`` flags that set them.

Everything but the credentials token comes from flags, so ``ps`` on the host
shows a sandbox's network policy. The token that unlocks the credentials is
read from ``TETHER_EGRESS_TOKEN`` instead (argv is world-readable through
``/proc``), and removed from the environment once read.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from sandbox_server.egress.policy import EgressMode, EgressPolicy, InvalidHost, parse_host_patterns
from sandbox_server.egress.resolve import Override, parse_overrides

TOKEN_ENV = "TETHER_EGRESS_TOKEN"
"""Environment variable holding the bearer token for ``--credentials-url`` (never a flag)."""


@dataclass(frozen=True)
class EgressSettings:
    """How a sandbox reaches the network. The default (``none``) starts no proxy: loopback only."""

    mode: EgressMode = EgressMode.NONE
    allow_hosts: tuple[str, ...] = ()
    """``--allow-host`` values: names, ``*.`` wildcards, IP literals (the MCP and package hosts included)."""
    resolve: tuple[str, ...] = ()
    """``--egress-resolve NAME=IP[:PORT]`` pins (tests stand loopback servers in for public names)."""
    session_id: str | None = None
    credentials_url: str | None = None
    ca_cert: Path | None = None
    ca_key: Path | None = None
    upstream_ca: Path | None = None

    def __post_init__(self) -> None:
        try:
            parse_host_patterns(self.allow_hosts)
        except InvalidHost as exc:
            raise ValueError(f"--allow-host: {exc}") from None
        parse_overrides(self.resolve)
        if (self.ca_cert is None) != (self.ca_key is None):
            raise ValueError("--ca-cert and --ca-key go together")
        if self.credentials_url is not None and self.mode is EgressMode.NONE:
            raise ValueError("--credentials-url needs --egress limited or unrestricted")

    @property
    def enabled(self) -> bool:
        return self.mode is not EgressMode.NONE

    def overrides(self) -> dict[str, Override]:
        return parse_overrides(self.resolve)

    def policy(self) -> EgressPolicy:
        return EgressPolicy(self.mode, parse_host_patterns(self.allow_hosts), frozenset(self.overrides()))


MAX_DESCRIBED_HOSTS = 20


def describe_network(settings: EgressSettings, secret_names: list[str]) -> str:
    """What the ``bash`` tool description tells the model about the network."""
    if not settings.enabled:
        return "There is no network access."
    if settings.mode is EgressMode.UNRESTRICTED:
        text = "Outbound HTTP and HTTPS to public hosts go through a proxy already set in the environment"
    else:
        hosts = list(settings.allow_hosts[:MAX_DESCRIBED_HOSTS])
        more = len(settings.allow_hosts) - len(hosts)
        listed = ", ".join(hosts) + (f" and {more} more" if more > 0 else "")
        text = (
            "Outbound HTTP and HTTPS go through a proxy already set in the environment, "
            f"which allows only: {listed or 'no hosts'}"
        )
    text += "; other protocols have no route."
    if secret_names:
        text += (
            f" ${', $'.join(secret_names)} hold placeholders that the proxy replaces with the real "
            "credentials in HTTPS requests to the hosts each credential allows; use them as if they were the values."
        )
    return text


def add_egress_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the egress flags to ``tether sandbox``; ``egress_from_args`` reads them back."""
    group = parser.add_argument_group(
        "egress (outbound network through the sandbox's proxy; the credentials token comes from "
        "the TETHER_EGRESS_TOKEN environment variable)"
    )
    group.add_argument(
        "--egress",
        choices=[m.value for m in EgressMode],
        default=EgressMode.NONE.value,
        help="none: no network (default); limited: only --allow-host hosts; unrestricted: any public host",
    )
    group.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="HOST",
        help="host allowed under --egress limited: api.example.com, *.example.com, 192.0.2.1 (repeatable)",
    )
    group.add_argument(
        "--egress-resolve",
        action="append",
        default=[],
        metavar="NAME=IP[:PORT]",
        help="pin NAME to an address (and port), exempt from the internal-address check; for tests",
    )
    group.add_argument("--session-id", default=None, help="session id written in every egress log line")
    group.add_argument(
        "--credentials-url",
        default=None,
        metavar="URL",
        help="where to GET the session's environment_variable credentials once at start",
    )
    group.add_argument("--ca-cert", type=Path, default=None, help="egress CA certificate (PEM)")
    group.add_argument(
        "--ca-key", type=Path, default=None, help="egress CA key (PEM); without both a throwaway CA is made"
    )
    group.add_argument(
        "--upstream-ca",
        type=Path,
        default=None,
        metavar="FILE",
        help="extra CA certificates trusted for upstream TLS, besides the system's (for tests)",
    )


def egress_from_args(args: argparse.Namespace) -> EgressSettings:
    """The ``EgressSettings`` named by flags added with ``add_egress_arguments`` (``ValueError`` if invalid)."""
    return EgressSettings(
        mode=EgressMode(args.egress),
        allow_hosts=tuple(args.allow_host),
        resolve=tuple(args.egress_resolve),
        session_id=args.session_id,
        credentials_url=args.credentials_url,
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        upstream_ca=args.upstream_ca,
    )
