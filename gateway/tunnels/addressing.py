"""Which tunnel a host name belongs to: ``<subdomain>.<tunnel label>.<base domain>``.

Every tunnel's ``domain`` is ``<label>.<base domain>``; an MCP server URL whose host is a
subdomain of it (``crm.k3x9....tunnels.tether.internal``) is carried by that tunnel, and
the subdomain (``crm``) is the target the agent maps to an on-prem route.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

DEFAULT_BASE_DOMAIN = "tunnels.tether.internal"
_LABEL_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class NotATunnelHost(ValueError):
    pass


@dataclass(frozen=True)
class TunnelAddress:
    domain: str
    """The tunnel's ``domain`` (``<label>.<base>``)."""
    subdomain: str
    """What precedes it: the agent's route name."""


def check_base_domain(base: str) -> str:
    base = base.strip().lower().rstrip(".")
    if not _DOMAIN.match(base) or len(base) > 200:
        raise ValueError(f"tunnel base domain {base!r} is not a DNS name")
    return base


def new_domain(base: str) -> str:
    """A fresh ``<16 random characters>.<base>`` (~82 bits; uniqueness is still checked)."""
    label = "".join(secrets.choice(_LABEL_ALPHABET) for _ in range(16))
    return f"{label}.{base}"


def is_tunnel_host(host: str, base: str) -> bool:
    return host.lower().rstrip(".").endswith("." + base)


def split_host(host: str, base: str) -> TunnelAddress:
    """``crm.abc.<base>`` -> (``abc.<base>``, ``crm``); ``NotATunnelHost`` otherwise."""
    name = host.lower().rstrip(".")
    if not name.endswith("." + base):
        raise NotATunnelHost(f"{host} is not under {base}")
    labels = name[: -len(base) - 1].split(".")
    if len(labels) < 2 or not all(labels):
        raise NotATunnelHost(f"{host} names a tunnel but no subdomain (expected <route>.<tunnel domain>)")
    return TunnelAddress(f"{labels[-1]}.{base}", ".".join(labels[:-1]))
