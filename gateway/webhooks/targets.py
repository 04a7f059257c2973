"""Where webhooks may be delivered: public addresses only, unless the operator lists a target.

Any API-key holder chooses a webhook URL and the gateway POSTs to it, so without a check
that is server-side request forgery: into the gateway host's own services, its private
network or the cloud metadata endpoint (``169.254.169.254``). A target is refused when its
host is, or resolves to, an internal address (``sandbox_server.egress.policy.is_internal``:
loopback, private (RFC 1918, ULA), link-local, shared, unspecified, multicast, reserved,
and IPv6 forms that embed one of those), unless ``TETHER_WEBHOOK_ALLOWED_HOSTS`` lists it:

- a host name or ``*.`` wildcard (``hooks.internal``, ``*.corp.example``): that name is
  delivered to whatever it resolves to;
- an IP address or network (``10.0.0.5``, ``10.1.0.0/16``, ``fd00::/8``): those addresses
  may be connected to, whatever name led to them.

The check runs when an endpoint is registered (a refused URL is a 400 then) and again at
every delivery attempt, on the addresses the name resolves to at that moment; the delivery
connects to an address that passed (``PinnedTransport``), never to a fresh lookup, so DNS
that changes between the check and the connection (rebinding) cannot redirect it. A name
that does not resolve when registered is accepted: deliveries check it when it does.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import anyio
import httpx2

from gateway.errors import InvalidRequest
from sandbox_server.egress.policy import (
    HostPattern,
    InvalidHost,
    IPAddress,
    is_internal,
    matches_any,
    parse_host,
    parse_host_pattern,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]
"""``(host, port) -> addresses``; raises ``OSError`` when the name does not resolve."""

DEFAULT_RESOLVE_TIMEOUT = 5.0
DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefused(Exception):
    """The target is, or resolves to, an address webhooks may not reach."""


class TargetUnresolved(Exception):
    """The target's name did not resolve (now): nothing can be said about it."""


class RefusedConnect(httpx2.ConnectError):
    """``PinnedTransport`` would not connect: the target is refused. Nothing was sent."""


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The addresses ``getaddrinfo`` gives for ``host``, in its order, without duplicates."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _parse_entry(entry: str) -> HostPattern | IPNetwork:
    if "/" in entry:
        try:
            return ipaddress.ip_network(entry)
        except ValueError as exc:
            raise ValueError(f"TETHER_WEBHOOK_ALLOWED_HOSTS: {entry!r} is not a network: {exc}") from None
    try:
        pattern = parse_host_pattern(entry)
    except InvalidHost as exc:
        raise ValueError(f"TETHER_WEBHOOK_ALLOWED_HOSTS: {exc}") from None
    return ipaddress.ip_network(pattern.ip) if pattern.ip is not None else pattern


@dataclass(frozen=True)
class WebhookTargets:
    """The rule for webhook destinations: public addresses, plus what the operator listed."""

    allowed_hosts: tuple[HostPattern, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()
    resolver: Resolver = field(default=system_resolver, compare=False)
    resolve_timeout: float = DEFAULT_RESOLVE_TIMEOUT

    @classmethod
    def from_entries(cls, entries: Iterable[str], resolver: Resolver = system_resolver) -> WebhookTargets:
        """From ``TETHER_WEBHOOK_ALLOWED_HOSTS`` entries; ``ValueError`` names a bad one."""
        parsed = [_parse_entry(entry.strip()) for entry in entries if entry.strip()]
        return cls(
            tuple(p for p in parsed if isinstance(p, HostPattern)),
            tuple(p for p in parsed if not isinstance(p, HostPattern)),
            resolver,
        )

    def _listed(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)

    def _permitted(self, address: IPAddress) -> bool:
        return self._listed(address) or not is_internal(address)

    async def addresses(self, raw_host: str, port: int) -> list[IPAddress]:
        """The addresses of ``raw_host`` that may be connected to, in resolver order.

        Raises ``TargetRefused`` if the host is malformed, or is or resolves to an address
        not permitted (one is enough: a resolver answer is not the attacker's to choose
        from), and ``TargetUnresolved`` if the name does not resolve.
        """
        try:
            host = parse_host(raw_host)
        except InvalidHost as exc:
            raise TargetRefused(f"{raw_host!r} is not a valid host: {exc}") from None
        if host.ip is not None:
            if not self._permitted(host.ip):
                raise TargetRefused(f"{host} is an internal address")
            return [host.ip]
        try:
            with anyio.fail_after(self.resolve_timeout):
                resolved = list(await self.resolver(host.name, port))
        except (OSError, TimeoutError) as exc:
            raise TargetUnresolved(f"{host} did not resolve: {exc or type(exc).__name__}") from None
        if not resolved:
            raise TargetUnresolved(f"{host} did not resolve")
        if not matches_any(self.allowed_hosts, host):
            for address in resolved:
                if not self._permitted(address):
                    raise TargetRefused(f"{host} resolves to an internal address ({address})")
        return resolved

    async def check_url(self, url: str) -> None:
        """Refuse (``InvalidRequest`` on ``url``) a webhook URL whose host is internal now."""
        parts = urlsplit(url)
        try:
            port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
        except ValueError:
            raise InvalidRequest("url: the port is not a number from 0 to 65535") from None
        try:
            await self.addresses(parts.hostname or "", port)
        except TargetRefused as exc:
            raise InvalidRequest(
                f"url: {exc}; webhooks go to public addresses only "
                "(an operator can allow a target in TETHER_WEBHOOK_ALLOWED_HOSTS)"
            ) from None
        except TargetUnresolved:
            return


@functools.lru_cache(maxsize=8)
def allowing(entries: tuple[str, ...]) -> WebhookTargets:
    """``WebhookTargets.from_entries``, parsed once per distinct allow-list."""
    return WebhookTargets.from_entries(entries)


class PinnedTransport(httpx2.AsyncBaseTransport):
    """Sends each request to an address ``targets`` permits, found by one lookup per request.

    The request keeps its URL's name in ``Host`` and, for HTTPS, in the TLS server name
    (SNI and certificate check); only the TCP connection goes to the checked address.
    Connections are not kept alive, so a connection opened for one name is never reused
    for another that happens to share its address.
    """

    def __init__(self, targets: WebhookTargets, inner: httpx2.AsyncBaseTransport | None = None) -> None:
        self._targets = targets
        self._inner = inner or httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_keepalive_connections=0))

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        port = url.port or DEFAULT_PORTS.get(url.scheme, 80)
        try:
            addresses = await self._targets.addresses(url.host, port)
        except TargetRefused as exc:
            raise RefusedConnect(str(exc), request=request) from None
        except TargetUnresolved as exc:
            raise httpx2.ConnectError(str(exc), request=request) from None
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions["sni_hostname"] = url.host
        failure: httpx2.TransportError | None = None
        for address in addresses:
            pinned = httpx2.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,
                stream=request.stream,
                extensions=extensions,
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def aclose(self) -> None:
        await self._inner.aclose()
