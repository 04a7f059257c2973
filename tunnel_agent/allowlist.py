"""Where the agent may connect: addresses and ports, checked after DNS resolution.

The allow-list is written in addresses (``10.0.0.5:443``, ``10.1.0.0/16:*``,
``[fd00::/8]:8080``), never names: a route's host name is resolved when a stream opens,
and every address it resolves to must be allowed, or the stream is refused. The agent
then connects to the exact address it checked, so a name re-pointed by DNS (rebinding,
a compromised resolver, a gateway asking for something clever) cannot widen what the
agent reaches.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import anyio

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port) -> addresses``; injected so tests can stand in for DNS."""


class Refused(Exception):
    """The target is not allowed (or could not be resolved); the message names no secret."""


@dataclass(frozen=True)
class AllowEntry:
    network: Network
    port: int | None
    """None allows every port."""

    def permits(self, address: Address, port: int) -> bool:
        return address in self.network and (self.port is None or self.port == port)

    def __str__(self) -> str:
        host = str(self.network) if self.network.num_addresses > 1 else str(self.network.network_address)
        if self.network.version == 6:
            host = f"[{host}]"
        return f"{host}:{'*' if self.port is None else self.port}"


@dataclass(frozen=True)
class AllowList:
    entries: tuple[AllowEntry, ...]

    @classmethod
    def parse(cls, specs: Iterable[str]) -> AllowList:
        return cls(tuple(parse_entry(spec) for spec in specs))

    def permits(self, address: str, port: int) -> bool:
        parsed = _address(address)
        return any(entry.permits(parsed, port) for entry in self.entries)


def parse_entry(spec: str) -> AllowEntry:
    """``ADDRESS[/PREFIX]:PORT`` or ``...:*``; IPv6 in brackets."""
    text = spec.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"allow entry {spec!r}: expected [IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"allow entry {spec!r}: expected ADDRESS:PORT (use :* for any port)")
    try:
        network = ipaddress.ip_network(host, strict=True)
    except ValueError:
        raise ValueError(
            f"allow entry {spec!r}: {host!r} is not an IP address or network "
            "(the allow-list holds addresses, so DNS cannot widen it)"
        ) from None
    if port_text == "*":
        return AllowEntry(network, None)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"allow entry {spec!r}: bad port {port_text!r}")
    return AllowEntry(network, int(port_text))


def _address(text: str) -> Address:
    parsed = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


async def resolve_allowed(host: str, port: int, allow: AllowList, resolver: Resolver) -> str:
    """The address to connect to: ``host`` resolved, every result checked; else ``Refused``."""
    try:
        addresses = [host] if _is_literal(host) else await resolver(host, port)
    except OSError as exc:
        raise Refused(f"cannot resolve {host}: {exc.strerror or exc}") from None
    if not addresses:
        raise Refused(f"{host} resolved to no address")
    for address in addresses:
        if not allow.permits(address, port):
            raise Refused(f"{host}:{port} resolves to {address}, which is not in the agent's allow-list")
    return str(_address(addresses[0]))


def _is_literal(host: str) -> bool:
    try:
        _address(host)
    except ValueError:
        return False
    return True
