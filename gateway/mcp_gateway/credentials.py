"""Vault credentials for the last hop to an upstream, on behalf of one virtual server.

A virtual server names vault ids; for each URL upstream the first ``static_bearer`` or
``mcp_oauth`` credential for that URL becomes the ``Authorization`` header of the
gateway's request (refreshing an expired OAuth token, as for sessions). Clients of the
virtual server never see it. Stdio upstreams get their secrets from their own encrypted
``env`` instead.

Lookups are cached for a few seconds: a burst of calls costs one set of Store reads, and a
rotated or revoked credential takes effect within ``ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.mcp_gateway.errors import UpstreamUnavailable
from gateway.store.base import Body, Store
from gateway.vault.keyring import DecryptionFailed, KeyRing
from gateway.vault.mcp_auth import RefreshFailed, ServerAuth, auth_for

NO_AUTH = ServerAuth({})


class Credentials:
    def __init__(
        self, store: Store, keyring: KeyRing, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.ttl = ttl
        self._clock = clock
        self._cache: dict[tuple[tuple[str, ...], str], tuple[float, ServerAuth]] = {}

    async def for_upstream(self, vault_ids: list[str], upstream: Body) -> ServerAuth:
        if upstream["transport"]["type"] != "url" or not vault_ids:
            return NO_AUTH
        url = upstream["transport"]["url"]
        key = (tuple(vault_ids), url)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        try:
            auth = await auth_for(self.store, self.keyring, vault_ids, url)
        except (RefreshFailed, DecryptionFailed) as exc:
            raise UpstreamUnavailable(f"its vault credential could not be used: {exc}") from None
        if len(self._cache) > 1024:
            self._cache.clear()
        self._cache[key] = (now, auth)
        return auth

    def forget(self) -> None:
        self._cache.clear()
