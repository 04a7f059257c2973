"""Name resolution for the proxy, with operator overrides.

The proxy resolves each name once, checks every address it got
(``EgressPolicy.check_addresses``) and then connects to exactly those
addresses, so a DNS answer cannot change between the check and the connect.

Overrides (``--egress-resolve NAME=IP[:PORT]``) pin a name to an address and
optionally a port. Tests use them to stand a loopback server in for a public
host; an operator could use them to pin an internal service by name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sandbox_server.egress.policy import Host, InvalidHost, IPAddress, parse_host

RESOLVE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Override:
    address: IPAddress
    port: int | None = None
    """Replaces the requested port when set."""


def parse_override(text: str) -> tuple[str, Override]:
    """``api.example.test=127.0.0.1:8443`` (or ``=127.0.0.1``, ``=[::1]:8443``) -> ``(name, Override)``."""
    name, sep, target = text.partition("=")
    if not sep:
        raise ValueError(f"--egress-resolve {text!r}: expected NAME=IP[:PORT]")
    try:
        host = parse_host(name)
    except InvalidHost as exc:
        raise ValueError(f"--egress-resolve {text!r}: {exc}") from None
    if host.ip is not None:
        raise ValueError(f"--egress-resolve {text!r}: the name to override is an IP address")
    port: int | None = None
    address_text = target
    if target.startswith("["):
        address_text, _, rest = target[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"--egress-resolve {text!r}: bad address")
            port = _port(rest[1:], text)
    elif target.count(":") == 1:
        address_text, _, port_text = target.partition(":")
        port = _port(port_text, text)
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise ValueError(f"--egress-resolve {text!r}: {address_text!r} is not an IP address") from None
    return host.name, Override(address, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"--egress-resolve {whole!r}: bad port {text!r}")
    return int(text)


def parse_overrides(texts: Iterable[str]) -> dict[str, Override]:
    return dict(parse_override(text) for text in texts)


class Resolver:
    """Resolves a ``Host`` to ``(address, port)`` pairs: literal, overridden, or through the system resolver."""

    def __init__(self, overrides: Mapping[str, Override] | None = None) -> None:
        self.overrides = dict(overrides or {})

    async def resolve(self, host: Host, port: int) -> list[tuple[IPAddress, int]]:
        """Addresses to connect to, in the resolver's order, without duplicates; ``[]`` if unresolvable."""
        if host.ip is not None:
            return [(host.ip, port)]
        override = self.overrides.get(host.name)
        if override is not None:
            return [(override.address, override.port or port)]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(
                    host.name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
                )
        except (OSError, TimeoutError, UnicodeError):
            return []
        found: list[tuple[IPAddress, int]] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            text = str(sockaddr[0]).split("%", 1)[0]
            try:
                pair = (ipaddress.ip_address(text), port)
            except ValueError:
                continue
            if pair not in found:
                found.append(pair)
        return found
