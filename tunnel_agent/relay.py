"""Serve one tunnel stream on-prem: route, allow-list, last-hop credentials, real HTTP.

Order matters: the route and the allow-list are checked when the stream opens, before a
byte of the request is read; the connection goes to the exact address that was checked;
the route's headers (credentials) replace any the gateway sent and are added only here,
so they never cross the tunnel.

For an ``https://`` route whose stream carries the tunnel's CA certificates, the server must
chain to one of them (``tunnel_agent.trust``); a certificate that does not is reported back by
name, not as a bare "unreachable".

Routes come from the config file and, in worker mode, from ``DynamicRoutes`` (one loopback
route per local sandbox, each allowed only its own port). Metrics label every dynamic route
``sandbox`` so per-session names never become Prometheus label values.
"""

from __future__ import annotations

import logging
import ssl

import anyio
import httpx2
from anyio.streams.buffered import BufferedByteReceiveStream

from tunnel_agent.allowlist import AllowList, Refused, Resolver, resolve_allowed, system_resolver
from tunnel_agent.config import AgentConfig, Route
from tunnel_agent.httpwire import (
    HeadError,
    RequestHead,
    ResponseHead,
    body_chunks,
    encode_response,
    end_to_end,
    read_request,
)
from tunnel_agent.metrics import AgentMetrics
from tunnel_agent.mux import MuxStream
from tunnel_agent.protocol import ErrorCode
from tunnel_agent.routes import DynamicRoutes
from tunnel_agent.trust import BadTrust, PinnedClients

log = logging.getLogger("tether.tunnel.relay")


def upstream_client(
    connect_timeout: float = 10.0, verify: ssl.SSLContext | bool = True
) -> httpx2.AsyncClient:
    """No proxies from the environment (they would bypass the allow-list), no redirects
    followed (a redirect is relayed to the gateway, never chased on-prem), and no read
    timeout: the gateway bounds each call and cancels the stream."""
    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(None, connect=connect_timeout),
        trust_env=False,
        follow_redirects=False,
        verify=verify,
    )


def pinned_client(context: ssl.SSLContext) -> httpx2.AsyncClient:
    """An upstream client whose TLS verifies with ``context`` (the tunnel's CA certificates)."""
    return upstream_client(verify=context)


class Relay:
    """The mux's stream handler on the agent."""

    def __init__(
        self,
        config: AgentConfig,
        http: httpx2.AsyncClient,
        metrics: AgentMetrics,
        resolver: Resolver = system_resolver,
        dynamic: DynamicRoutes | None = None,
        pinned: PinnedClients | None = None,
    ) -> None:
        self.config = config
        self.http = http
        self.metrics = metrics
        self.resolver = resolver
        self.dynamic = dynamic
        self.pinned = pinned or PinnedClients(pinned_client)

    async def __call__(self, stream: MuxStream) -> None:
        async with anyio.create_task_group() as tasks:

            async def stop_when_aborted() -> None:
                await stream.wait_aborted()
                tasks.cancel_scope.cancel()

            tasks.start_soon(stop_when_aborted)
            try:
                await self._serve(stream)
            finally:
                tasks.cancel_scope.cancel()

    def _lookup(self, subdomain: str) -> tuple[Route, AllowList, str] | None:
        """The route, the allow-list that governs it, and its metrics label."""
        route = self.config.routes.get(subdomain)
        if route is not None:
            return route, self.config.allow, route.subdomain
        found = self.dynamic.get(subdomain) if self.dynamic is not None else None
        if found is not None:
            return found.route, found.allow, "sandbox"
        return None

    async def _serve(self, stream: MuxStream) -> None:
        found = self._lookup(stream.target)
        if found is None:
            self._refuse(stream, "unknown", f"no route for subdomain {stream.target!r}")
            return
        route, allow, label = found
        self.metrics.streams.inc(route=label)
        try:
            address = await resolve_allowed(route.host, route.port, allow, self.resolver)
        except Refused as exc:
            self._refuse(stream, "not_allowed", str(exc))
            return
        reader = BufferedByteReceiveStream(stream)
        try:
            head = await read_request(reader)
            if not head.has_body:
                await _expect_end(reader)
        except HeadError as exc:
            stream.reset(ErrorCode.PROTOCOL, str(exc))
            return
        http = self.http
        if route.scheme == "https" and head.trust:
            try:
                http = await self.pinned.client_for(head.trust)
            except BadTrust as exc:
                stream.reset(ErrorCode.PROTOCOL, str(exc))
                return
        request = self._upstream_request(http, route, address, head, reader)
        try:
            response = await http.send(request, stream=True)
        except httpx2.HTTPError as exc:
            self.metrics.upstream_errors.inc(route=label)
            message = _unreachable(route, exc, pinned=http is not self.http)
            log.warning(
                "route %s: upstream %s failed: %s (%s)",
                route.subdomain,
                route.authority,
                type(exc).__name__,
                message,
            )
            stream.reset(ErrorCode.UNREACHABLE, message)
            return
        try:
            self.metrics.responses.inc(route=label, status=f"{response.status_code // 100}xx")
            head_out = ResponseHead(response.status_code, end_to_end(response.headers.multi_items()))
            await stream.send(encode_response(head_out))
            async for chunk in response.aiter_raw():
                await stream.send(chunk)
            await stream.send_eof()
        except httpx2.HTTPError as exc:
            self.metrics.upstream_errors.inc(route=label)
            log.warning("route %s: upstream response broke off: %s", route.subdomain, type(exc).__name__)
            stream.reset(ErrorCode.UNREACHABLE, f"route {route.subdomain}: upstream response broke off")
        finally:
            await response.aclose()

    def _upstream_request(
        self,
        http: httpx2.AsyncClient,
        route: Route,
        address: str,
        head: RequestHead,
        reader: BufferedByteReceiveStream,
    ) -> httpx2.Request:
        # The route's headers win over anything the gateway sent with the same name.
        headers = [(name, value) for name, value in end_to_end(head.headers) if name not in route.headers]
        headers += list(route.headers.items())
        headers.append(("host", route.authority))
        extensions = {"sni_hostname": route.host} if route.scheme == "https" else {}
        return http.build_request(
            head.method,
            route.url(address, head.target),
            headers=headers,
            content=body_chunks(reader) if head.has_body else None,
            extensions=extensions,
        )

    def _refuse(self, stream: MuxStream, reason: str, message: str) -> None:
        self.metrics.refused.inc(reason=reason)
        log.warning("refused stream %d: %s", stream.id, message)
        stream.reset(ErrorCode.REFUSED, message)


def _unreachable(route: Route, error: httpx2.HTTPError, pinned: bool) -> str:
    """What the gateway is told: a refused server certificate by name, anything else briefly."""
    failure = _verify_failure(error)
    if failure is None:
        return f"route {route.subdomain}: upstream unreachable"
    roots = "the tunnel's CA certificates" if pinned else "the agent's default trust store"
    return f"route {route.subdomain}: TLS certificate of {route.host} not trusted by {roots}: {failure}"


def _verify_failure(error: BaseException) -> str | None:
    """Why the server's certificate was refused, if that is what ``error`` comes from."""
    seen: BaseException | None = error
    for _ in range(16):  # a chain of causes, bounded in case one loops
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason or seen)
        seen = seen.__cause__ or seen.__context__
    return None


async def _expect_end(reader: BufferedByteReceiveStream) -> None:
    """A request without a body: the gateway's half must end right after the head."""
    try:
        await reader.receive()
    except anyio.EndOfStream:
        return
    raise HeadError("request without a body carried body bytes")
