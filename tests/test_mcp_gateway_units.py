"""The MCP gateway's pieces on their own: names, breaker, rate limiter, tokens, policy, catalog."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server import MCPServer

from gateway.mcp_gateway.access import Access, AccessDenied, key_id
from gateway.mcp_gateway.breaker import CircuitBreaker, CircuitOpen
from gateway.mcp_gateway.catalog import Catalog
from gateway.mcp_gateway.errors import UpstreamUnavailable
from gateway.mcp_gateway.governance import Governance
from gateway.mcp_gateway.naming import (
    exposed_names,
    exposed_templates,
    exposed_uris,
    parse_namespaced_uri,
)
from gateway.mcp_gateway.ratelimit import RateLimiter
from gateway.mcp_gateway.settings import McpGatewaySettings
from gateway.mcp_gateway.upstreams import UpstreamPool
from gateway.vault.mcp_auth import ServerAuth
from policies.engine import PolicySet

VALID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Naming ----------------------------------------------------------------------------------


def test_names_are_short_when_unique_and_namespaced_when_they_collide() -> None:
    names = exposed_names([("alpha", "add"), ("beta", "add"), ("alpha", "echo"), ("beta", "only")])
    assert names == {
        ("alpha", "add"): "alpha__add",
        ("beta", "add"): "beta__add",
        ("alpha", "echo"): "echo",
        ("beta", "only"): "only",
    }


def test_names_stay_unique_and_valid_after_sanitising() -> None:
    origins = [
        ("a", "read.file"),
        ("a", "read_file"),
        ("b", "x" * 100),
        ("c", "x" * 100),
        ("d", "a__read_file"),
    ]
    names = exposed_names(origins)
    assert len(set(names.values())) == len(origins)
    assert all(VALID.match(name) for name in names.values())


def test_colliding_uris_and_templates_are_namespaced_reversibly() -> None:
    uris = exposed_uris([("alpha", "memo://readme"), ("beta", "memo://readme"), ("beta", "memo://beta")])
    assert uris[("beta", "memo://beta")] == "memo://beta"
    assert parse_namespaced_uri(uris[("alpha", "memo://readme")]) == ("alpha", "memo://readme")
    templates = exposed_templates([("alpha", "notes://{topic}"), ("beta", "notes://{topic}")])
    expanded = templates[("beta", "notes://{topic}")].replace("{topic}", "x")
    assert parse_namespaced_uri(expanded) == ("beta", "notes://x")
    assert parse_namespaced_uri("memo://readme") is None


# Circuit breaker -------------------------------------------------------------------------


def test_the_breaker_opens_after_consecutive_failures_and_probes_after_the_cool_down() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after=10, clock=clock)
    for _ in range(2):
        with breaker.guard() as attempt:
            attempt.failed("connection refused")
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen) as refused:
        with breaker.guard():
            pass
    assert refused.value.retry_in == pytest.approx(10)
    assert refused.value.last_error == "connection refused"

    clock.now += 10
    assert breaker.state == "half_open"
    with breaker.guard() as probe:
        with pytest.raises(CircuitOpen):  # one probe at a time
            with breaker.guard():
                pass
        probe.failed("still down")
    assert breaker.state == "open"  # a failed probe re-opens for another cool-down

    clock.now += 10
    with breaker.guard() as probe:
        probe.succeeded()
    assert breaker.state == "closed" and breaker.snapshot()["consecutive_failures"] == 0


def test_a_success_resets_the_failure_count_and_an_abandoned_probe_frees_the_slot() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after=1, clock=clock)
    with breaker.guard() as attempt:
        attempt.failed("x")
    with breaker.guard() as attempt:
        attempt.succeeded()
    with breaker.guard() as attempt:
        attempt.failed("x")
    assert breaker.state == "closed"
    with breaker.guard() as attempt:
        attempt.failed("x")
    clock.now += 1
    with breaker.guard():
        pass  # neither outcome: e.g. the caller was cancelled
    with breaker.guard() as probe:
        probe.succeeded()
    assert breaker.state == "closed"


# Rate limiter ----------------------------------------------------------------------------


def test_token_bucket_allows_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    key = ("key_1", "dev")
    assert limiter.take(key, rate=0.5, burst=2) is None
    assert limiter.take(key, rate=0.5, burst=2) is None
    assert limiter.take(key, rate=0.5, burst=2) == pytest.approx(2.0)
    assert limiter.take(("key_2", "dev"), rate=0.5, burst=2) is None  # buckets are per caller
    clock.now += 2
    assert limiter.take(key, rate=0.5, burst=2) is None
    assert limiter.take(key, rate=0.5, burst=2) == pytest.approx(2.0)


# Access ----------------------------------------------------------------------------------

SECRET = b"0123456789abcdef0123456789abcdef"


def test_api_keys_reach_everything_and_are_recorded_by_digest() -> None:
    access = Access(["k-one", "k-two"], SECRET)
    caller = access.authenticate({"authorization": "Bearer k-two"})
    assert caller.id == key_id("k-two") and "k-two" not in caller.id
    access.authorize(caller, "anything")
    with pytest.raises(AccessDenied) as missing:
        access.authenticate({})
    assert missing.value.status == 401 and not missing.value.presented
    with pytest.raises(AccessDenied) as wrong:
        access.authenticate({"x-api-key": "k-three"})
    assert wrong.value.status == 401 and wrong.value.presented


def test_tokens_are_scoped_to_virtual_servers_and_expire() -> None:
    access = Access(["k"], SECRET)
    token = access.mint("ci-bot", ["ops", "dev"], 600)["token"]
    caller = access.authenticate({"authorization": f"Bearer {token}"})
    assert caller.kind == "jwt" and caller.id == "jwt:ci-bot" and caller.scopes == {"ops", "dev"}
    access.authorize(caller, "ops")
    with pytest.raises(AccessDenied) as forbidden:
        access.authorize(caller, "prod")
    assert forbidden.value.status == 403

    everything = access.authenticate({"authorization": f"Bearer {access.mint('ops', ['*'], 600)['token']}"})
    access.authorize(everything, "prod")

    expired = access.mint("late", ["ops"], 60, now=0)["token"]
    with pytest.raises(AccessDenied, match="expired"):
        access.authenticate({"authorization": f"Bearer {expired}"})
    other = Access(["k"], b"another-secret-another-secret-32b").mint("x", ["ops"], 600)["token"]
    with pytest.raises(AccessDenied, match="invalid token"):
        access.authenticate({"authorization": f"Bearer {other}"})


# Governance ------------------------------------------------------------------------------


def test_policy_denies_asks_and_allows_and_ask_becomes_a_refusal(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\n"
        "rules:\n"
        "  - id: no-drop\n"
        "    servers: [db]\n"
        "    tools: [query]\n"
        "    when: {sql: {matches: 'DROP'}}\n"
        "    decision: deny\n"
        "    message: no drops\n"
        "  - id: reads-ok\n"
        "    servers: [db]\n"
        "    tools: [query]\n"
        "    decision: allow\n"
    )
    governance = Governance(PolicySet.load([policy]), McpGatewaySettings())
    open_server = {"permission_policy": "always_allow"}
    denied = governance.decide(open_server, "db", "query", {"sql": "DROP TABLE t"})
    assert not denied.allowed and denied.message is not None and "no drops" in denied.message
    assert governance.decide(open_server, "db", "query", {"sql": "SELECT 1"}).allowed
    strict = {"permission_policy": "auto"}  # default-deny: only rules allow
    assert governance.decide(strict, "db", "query", {"sql": "SELECT 1"}).allowed
    refused = governance.decide(strict, "other", "tool", {})
    assert not refused.allowed and refused.permission == "ask"
    assert refused.message is not None and "no one to approve" in refused.message


def test_limits_take_the_tighter_timeout_and_fall_back_to_settings() -> None:
    governance = Governance(
        PolicySet(), McpGatewaySettings(call_timeout=60, rate_per_minute=120, rate_burst=5)
    )
    limits = governance.limits({"call_timeout_seconds": 30}, {"timeout_seconds": 10})
    assert limits.call_timeout == 10 and limits.rate_per_second == 2 and limits.burst == 5
    assert governance.limits({}, {}).call_timeout == 60


# Catalog ---------------------------------------------------------------------------------


class InMemoryUpstream:
    """An upstream reached in memory (no processes), which a test can switch off."""

    def __init__(self, name: str, server: MCPServer) -> None:
        self.name = name
        self.body: dict[str, Any] = {"name": name, "transport": {"type": "url", "url": f"http://{name}/mcp"}}
        self.breaker = CircuitBreaker(failure_threshold=1, reset_after=3600)
        self.server = server
        self.up = True

    @asynccontextmanager
    async def session(
        self, headers: dict[str, str], timeout: float, watch: Any = None
    ) -> AsyncIterator[Client]:
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        async with Client(self.server) as client:
            yield client

    async def run(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def failed(self) -> None:
        return None

    def snapshot(self) -> dict[str, Any]:
        return {}


def _server(label: str) -> MCPServer:
    server = MCPServer(label)

    @server.tool()
    def add(a: int, b: int) -> str:
        return f"{label}:{a + b}"

    @server.tool()
    def secret() -> str:
        return label

    return server


@pytest.mark.anyio
async def test_a_view_merges_selections_and_serves_the_last_listing_while_an_upstream_is_down() -> None:
    async def ignore(name: str, kinds: frozenset[str]) -> None:
        return None

    pool = UpstreamPool(McpGatewaySettings(), ignore)
    upstreams = {name: InMemoryUpstream(name, _server(name)) for name in ("alpha", "beta")}
    pool._upstreams.update(upstreams)  # the pool normally starts them itself
    catalog = Catalog(pool, ttl=300, listing_timeout=5)
    virtual = {
        "name": "dev",
        "servers": [
            {"server": "alpha", "tools": ["*"], "resources": True, "prompts": True},
            {"server": "beta", "tools": ["add"], "resources": True, "prompts": True},
        ],
    }
    bodies = {name: upstream.body for name, upstream in upstreams.items()}

    async def no_credential(body: dict[str, Any]) -> ServerAuth:
        return ServerAuth({})

    view = await catalog.view(virtual, bodies, no_credential)
    assert set(view.tools) == {"alpha__add", "beta__add", "secret"}
    assert view.tools["secret"][0].upstream == "alpha"

    upstreams["beta"].up = False
    catalog.invalidate("beta")  # as after a list_changed: refetch, which now fails
    view = await catalog.view(virtual, bodies, no_credential)
    assert "beta__add" in view.tools and not view.unavailable  # the last listing, still routable
    with pytest.raises(UpstreamUnavailable, match="circuit open"):
        await pool.use("beta", {}, lambda client: client.list_tools(), timeout=5)


@pytest.mark.anyio
async def test_a_merged_view_is_reused_until_a_listing_or_the_selection_changes() -> None:
    async def ignore(name: str, kinds: frozenset[str]) -> None:
        return None

    pool = UpstreamPool(McpGatewaySettings(), ignore)
    upstreams = {name: InMemoryUpstream(name, _server(name)) for name in ("alpha", "beta")}
    pool._upstreams.update(upstreams)
    catalog = Catalog(pool, ttl=300, listing_timeout=5)
    selection = {"tools": ["*"], "resources": True, "prompts": True}
    virtual = {"name": "dev", "servers": [{"server": "alpha", **selection}, {"server": "beta", **selection}]}
    bodies = {name: upstream.body for name, upstream in upstreams.items()}

    async def no_credential(body: dict[str, Any]) -> ServerAuth:
        return ServerAuth({})

    first = await catalog.view(virtual, bodies, no_credential)
    assert await catalog.view(virtual, bodies, no_credential) is first
    catalog.invalidate("beta")  # a list_changed: the listing is fetched again, the view rebuilt
    second = await catalog.view(virtual, bodies, no_credential)
    assert second is not first and set(second.tools) == set(first.tools)
    narrower = {**virtual, "servers": [{"server": "alpha", **selection}]}
    third = await catalog.view(narrower, bodies, no_credential)
    assert set(third.tools) == {"add", "secret"} and catalog.last_views["dev"] is third
