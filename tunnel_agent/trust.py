"""TLS on the last hop against the tunnel's own CA certificates.

The gateway sends, with each stream, the CA certificates registered on the tunnel (the
``trust`` of the request head). For an ``https://`` route the agent then verifies the on-prem
server against exactly those, not the system roots: the registered CAs are what the operator
said this tunnel's servers are signed by. Without any, the route keeps the default client and
its system trust.

This only changes which roots a server certificate must chain to; it never changes where the
agent connects (routes and the allow-list still decide that) and never touches the agent's own
connection to the gateway. One client per distinct set, so a connection verified under one
set is never reused for a request that carries another (an archived CA stops being trusted by
the next connection); few sets ever exist, and the oldest client is closed past ``MAX_SETS``.
"""

from __future__ import annotations

import hashlib
import ssl
from collections import OrderedDict
from collections.abc import Callable, Sequence
from types import TracebackType

import httpx2

MAX_SETS = 8

ClientFactory = Callable[[ssl.SSLContext], httpx2.AsyncClient]
"""Makes an upstream client that verifies with the given context (``relay.upstream_client``)."""


class BadTrust(ValueError):
    """The gateway sent certificates that do not load as PEM CA certificates."""


def pinned_context(pems: Sequence[str]) -> ssl.SSLContext:
    """A verifying client context whose only roots are ``pems``. Each is an anchor in its own
    right (``PARTIAL_CHAIN``), so a registered intermediate CA is trusted as registered."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cadata="\n".join(pems))
    except (ssl.SSLError, ValueError) as exc:
        raise BadTrust(f"the tunnel's CA certificates do not load: {exc}") from None
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


class PinnedClients:
    """Upstream clients by trust set; closed with the agent."""

    def __init__(self, make: ClientFactory) -> None:
        self._make = make
        self._clients: OrderedDict[str, httpx2.AsyncClient] = OrderedDict()

    async def client_for(self, pems: Sequence[str]) -> httpx2.AsyncClient:
        """``BadTrust`` if ``pems`` do not load."""
        key = hashlib.sha256("\0".join(sorted(pems)).encode()).hexdigest()
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        client = self._make(pinned_context(pems))
        self._clients[key] = client
        while len(self._clients) > MAX_SETS:
            _, oldest = self._clients.popitem(last=False)
            await oldest.aclose()
        return client

    async def aclose(self) -> None:
        while self._clients:
            _, client = self._clients.popitem()
            await client.aclose()

    async def __aenter__(self) -> PinnedClients:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()
