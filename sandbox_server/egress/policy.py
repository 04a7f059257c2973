"""Which destinations a sandbox may reach: host names, allow-list patterns, internal addresses.

Everything here is pure (no I/O) so the rules can be tested exhaustively. The
proxy asks two questions per connection: may this *name* be contacted at all
(``EgressPolicy.check_host``), and, once resolved, may these *addresses* be
contacted (``EgressPolicy.check_addresses``). The second question exists
because a permitted name can resolve to ``127.0.0.1`` or ``169.254.169.254``
(DNS rebinding): the proxy runs on the sandbox host, so such an answer would
reach the host's own services or the cloud metadata endpoint.

Host names are normalised the way clients interpret them, not the way they are
spelled: ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` are all
``127.0.0.1`` to ``inet_aton`` (and to curl and browsers), so they are treated
as that IP literal. A name whose last label is a number but which is not a valid
IPv4 literal is refused (the WHATWG URL rule), rather than looked up.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sandbox_server.egress.validation import DNS_LABEL, NUMERIC_LABEL, InvalidHost, check_allowed_host

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAME_CHARS = re.compile(r"^[a-z0-9_.-]+$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")

PACKAGE_MANAGER_HOSTS: tuple[str, ...] = (
    # Python
    "pypi.org",
    "files.pythonhosted.org",
    # JavaScript
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    # Debian / Ubuntu
    "deb.debian.org",
    "security.debian.org",
    "archive.ubuntu.com",
    "security.ubuntu.com",
    # Rust
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    # Ruby
    "rubygems.org",
    "index.rubygems.org",
    # Go
    "proxy.golang.org",
    "sum.golang.org",
    # Java / JVM
    "repo.maven.apache.org",
    "repo1.maven.org",
    # PHP
    "repo.packagist.org",
    # .NET
    "api.nuget.org",
    # Alpine
    "dl-cdn.alpinelinux.org",
)
"""Hosts of common public package registries, for an environment's ``allow_package_managers``.

Exact names only: a registry's download CDN is listed by its own name, so
allowing package installs does not allow everything under a shared domain.
"""


class EgressMode(enum.StrEnum):
    """``--egress``: no proxy at all, an allow-list, or any public destination."""

    NONE = "none"
    LIMITED = "limited"
    UNRESTRICTED = "unrestricted"


@dataclass(frozen=True)
class Host:
    """A destination host as the client named it, normalised: a lower-case DNS name or an IP literal."""

    name: str
    """The lower-case name without a trailing dot, or the canonical text of ``ip``."""
    ip: IPAddress | None = None

    def __str__(self) -> str:
        return self.name


def _ipv4_literal(text: str) -> ipaddress.IPv4Address | None:
    """``text`` as an IPv4 literal in any form ``inet_aton`` accepts; ``None`` if it is a name.

    Raises ``InvalidHost`` for names that end in a number but are no address.
    """
    last = text.rsplit(".", 1)[-1]
    if not NUMERIC_LABEL.match(last):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        raise InvalidHost("ends in a number but is not an IPv4 address") from None


def parse_host(raw: str) -> Host:
    """Normalise a host from a request line, ``Host`` header or ``CONNECT`` authority (port removed).

    IPv6 literals may come bracketed (``[::1]``) or bare. Zone ids, non-ASCII
    names and anything with characters outside ``[a-z0-9_.-]`` are refused:
    clients send IDNs as punycode, so a raw Unicode name here is malformed.
    """
    text = raw.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if ":" not in text:
            raise InvalidHost("brackets around a non-IPv6 host")
    if ":" in text:
        if "%" in text:
            raise InvalidHost("IPv6 zone ids are not allowed")
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise InvalidHost("invalid IPv6 literal") from None
        return Host(str(ip6), ip6)
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > 253 or not _NAME_CHARS.match(text):
        raise InvalidHost("not a valid host name")
    ip4 = _ipv4_literal(text)
    if ip4 is not None:
        return Host(str(ip4), ip4)
    if not all(DNS_LABEL.match(label) for label in text.split(".")):
        raise InvalidHost("not a valid host name")
    return Host(text)


def is_internal(ip: IPAddress) -> bool:
    """True for addresses that do not belong to the public Internet.

    Loopback, private (RFC 1918, ULA), link-local (including the metadata
    service at ``169.254.169.254``), shared (CGNAT), unspecified, multicast and
    reserved ranges, and IPv6 forms that embed such an IPv4 address
    (``::ffff:127.0.0.1``, 6to4, NAT64).
    """
    if isinstance(ip, ipaddress.IPv6Address):
        # Mapped and NAT64 addresses reach exactly their IPv4 address: judge that one.
        if ip.ipv4_mapped is not None:
            return is_internal(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        tunnelled = ip.sixtofour or (ip.teredo[1] if ip.teredo is not None else None)
        if tunnelled is not None and is_internal(tunnelled):
            return True
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip.is_loopback
        or ip.is_link_local
    )


@dataclass(frozen=True)
class HostPattern:
    """One allow-list entry: an exact name, a ``*.`` wildcard, or an IP literal.

    ``*.example.com`` matches any name strictly below ``example.com`` (at a
    label boundary) and not ``example.com`` itself, as the SDK documents for
    credential ``allowed_hosts``; list both to allow both.
    """

    text: str
    name: str | None = None
    suffix: str | None = None
    ip: IPAddress | None = None

    def matches(self, host: Host) -> bool:
        if self.ip is not None:
            return host.ip == self.ip
        if host.ip is not None:
            return False
        if self.suffix is not None:
            return host.name.endswith(self.suffix) and len(host.name) > len(self.suffix)
        return host.name == self.name


def parse_host_pattern(raw: str) -> HostPattern:
    """Parse ``api.example.com``, ``*.example.com``, ``192.0.2.1`` or ``[2001:db8::1]``.

    The syntax is ``validation.check_allowed_host``'s, the one the gateway's API checks
    too: URLs, ports, paths and a bare ``*`` are refused (``InvalidHost``), so a
    mistyped entry fails at start-up instead of silently never matching.
    """
    try:
        text = check_allowed_host(raw)
    except InvalidHost as exc:
        raise InvalidHost(f"{raw!r}: {exc}") from None
    if text.startswith("*."):
        return HostPattern(raw, suffix=text[1:])
    try:
        return HostPattern(raw, ip=ipaddress.ip_address(text))
    except ValueError:
        return HostPattern(raw, name=text)


def parse_host_patterns(raws: Iterable[str]) -> tuple[HostPattern, ...]:
    return tuple(parse_host_pattern(raw) for raw in raws)


def matches_any(patterns: Sequence[HostPattern], host: Host) -> bool:
    return any(pattern.matches(host) for pattern in patterns)


@dataclass(frozen=True)
class Verdict:
    """An allow or deny decision and the reason logged with it (never the request's content)."""

    allowed: bool
    reason: str


@dataclass(frozen=True)
class EgressPolicy:
    """The egress rules of one sandbox.

    ``overridden`` names have a fixed resolution given by the operator
    (``--egress-resolve``), which is trusted like an explicit IP allow entry,
    so the internal-address check does not apply to them.
    """

    mode: EgressMode
    allowed: tuple[HostPattern, ...] = ()
    overridden: frozenset[str] = frozenset()

    def _ip_listed(self, ip: IPAddress) -> bool:
        return any(pattern.ip == ip for pattern in self.allowed)

    def check_host(self, host: Host) -> Verdict:
        """May ``host`` (as named by the client) be contacted at all?"""
        if self.mode is EgressMode.NONE:
            return Verdict(False, "egress is disabled")
        if host.ip is not None:
            if self._ip_listed(host.ip):
                return Verdict(True, "IP address in allow-list")
            if self.mode is EgressMode.LIMITED:
                return Verdict(False, "IP literal not in allow-list")
            if is_internal(host.ip):
                return Verdict(False, "internal IP address")
            return Verdict(True, "unrestricted")
        if self.mode is EgressMode.UNRESTRICTED:
            return Verdict(True, "unrestricted")
        if matches_any(self.allowed, host):
            return Verdict(True, "host in allow-list")
        return Verdict(False, "host not in allow-list")

    def check_addresses(self, host: Host, addresses: Sequence[IPAddress]) -> Verdict:
        """May the addresses ``host`` resolved to be contacted? Refuses internal ones unless allowed by IP."""
        if host.ip is not None or host.name in self.overridden:
            return Verdict(True, "address fixed")
        if not addresses:
            return Verdict(False, "name did not resolve")
        for ip in addresses:
            if is_internal(ip) and not self._ip_listed(ip):
                return Verdict(False, f"resolves to internal address {ip}")
        return Verdict(True, "public addresses")
