"""The agent's configuration, allow-list, backoff and metrics, and the gateway's host mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.tunnels import addressing
from tunnel_agent.allowlist import AllowList, Refused, parse_entry, resolve_allowed
from tunnel_agent.backoff import Backoff
from tunnel_agent.config import ConfigError, load_config, parse_config
from tunnel_agent.connector import connect_url
from tunnel_agent.metrics import AgentMetrics

ROUTE = {"subdomain": "crm", "target": "http://10.0.0.5:9100"}


def config(**document: Any) -> Any:
    return parse_config({"routes": [ROUTE], **document}, {})


def test_environment_variables_fill_targets_and_headers() -> None:
    parsed = parse_config(
        {
            "routes": [
                {
                    "subdomain": "crm",
                    "target": "https://${CRM_HOST}/api/",
                    "headers": {"Authorization": "Bearer ${CRM_TOKEN}"},
                }
            ],
            "allow": ["10.0.0.0/8:443"],
        },
        {"CRM_HOST": "crm.corp", "CRM_TOKEN": "s3cret"},
    )
    route = parsed.routes["crm"]
    assert (route.scheme, route.host, route.port, route.path_prefix) == ("https", "crm.corp", 443, "/api")
    assert route.headers == {"authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(route) and "s3cret" not in repr(parsed)


def test_a_missing_variable_stops_the_agent() -> None:
    with pytest.raises(ConfigError, match="CRM_TOKEN is not set"):
        parse_config({"routes": [{**ROUTE, "headers": {"Authorization": "Bearer ${CRM_TOKEN}"}}]}, {})


def test_without_an_allow_section_only_ip_literal_targets_are_allowed() -> None:
    parsed = parse_config({"routes": [ROUTE, {"subdomain": "wiki", "target": "http://wiki.corp:8080"}]}, {})
    assert parsed.allow.permits("10.0.0.5", 9100)
    assert not parsed.allow.permits("10.0.0.5", 9101)
    assert len(parsed.allow.entries) == 1


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"routes": []}, "non-empty list"),
        ({"routes": [ROUTE], "extra": 1}, "mapping with 'routes'"),
        ({"routes": [{**ROUTE, "subdomain": "CRM"}]}, "lower-case DNS labels"),
        ({"routes": [{**ROUTE, "target": "ftp://10.0.0.5"}]}, "http:// or https://"),
        ({"routes": [{**ROUTE, "target": "http://user:pw@10.0.0.5"}]}, "no credentials"),
        ({"routes": [ROUTE, ROUTE]}, "appears twice"),
        ({"routes": [{**ROUTE, "headers": {"X": "a\nb"}}]}, "line break"),
        ({"routes": [ROUTE], "allow": ["crm.corp:443"]}, "not an IP address"),
        ({"routes": [ROUTE], "allow": ["10.0.0.5"]}, "ADDRESS:PORT"),
        ({"routes": [ROUTE], "allow": ["10.0.0.5:70000"]}, "bad port"),
    ],
)
def test_invalid_configs_are_refused_by_name(document: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config(document, {})


def test_config_files_are_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tunnel.yaml"
    path.write_text("routes:\n  - subdomain: crm\n    target: http://127.0.0.1:9100\n")
    assert set(load_config(path, {}).routes) == {"crm"}
    path.write_text("routes: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("spec", "allowed", "denied"),
    [
        ("10.0.0.5:443", [("10.0.0.5", 443)], [("10.0.0.6", 443), ("10.0.0.5", 80)]),
        ("10.1.0.0/16:*", [("10.1.200.3", 1), ("10.1.0.1", 65535)], [("10.2.0.1", 1)]),
        ("[fd00::/8]:8080", [("fd12::1", 8080)], [("fe80::1", 8080)]),
        ("127.0.0.1:9100", [("::ffff:127.0.0.1", 9100)], []),
    ],
)
def test_allow_entries_match_addresses_and_ports(
    spec: str, allowed: list[tuple[str, int]], denied: list[tuple[str, int]]
) -> None:
    allow = AllowList.parse([spec])
    assert all(allow.permits(address, port) for address, port in allowed)
    assert not any(allow.permits(address, port) for address, port in denied)


@pytest.mark.parametrize("spec", ["10.0.0.5:443", "10.1.0.0/16:*", "[fd00::/8]:8080", "[::1]:9100"])
def test_allow_entries_print_as_written(spec: str) -> None:
    assert str(parse_entry(spec)) == spec


@pytest.mark.anyio
async def test_resolution_picks_a_checked_address_or_refuses() -> None:
    allow = AllowList.parse(["10.0.0.0/24:443"])

    async def resolver(host: str, port: int) -> list[str]:
        return {"good": ["10.0.0.7", "10.0.0.8"], "mixed": ["10.0.0.7", "8.8.8.8"], "none": []}[host]

    assert await resolve_allowed("good", 443, allow, resolver) == "10.0.0.7"
    assert await resolve_allowed("10.0.0.9", 443, allow, resolver) == "10.0.0.9"
    for host in ("mixed", "none", "10.0.1.1"):
        with pytest.raises(Refused):
            await resolve_allowed(host, 443, allow, resolver)


def test_backoff_is_full_jitter_exponential_and_capped() -> None:
    ceilings: list[float] = []

    def lowest(low: float, high: float) -> float:
        ceilings.append(high)
        return low

    backoff = Backoff(base=0.5, cap=4.0, stable_after=30, uniform=lowest)
    for _ in range(6):
        assert backoff.next_delay(None) == 0.0  # the lower bound of full jitter is zero
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_resets_after_a_stable_connection() -> None:
    backoff = Backoff(base=1.0, cap=60, stable_after=30, uniform=lambda low, high: high)
    assert [backoff.next_delay(None) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.next_delay(connected_for=5.0) == 8.0  # a short-lived link proves nothing
    assert backoff.next_delay(connected_for=31.0) == 1.0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://gw:8420", "ws://gw:8420/v1/tunnels/connect"),
        ("https://tether.example.com/", "wss://tether.example.com/v1/tunnels/connect"),
        ("wss://edge.example.com/custom/path", "wss://edge.example.com/custom/path"),
    ],
)
def test_gateway_urls_become_websocket_urls(given: str, expected: str) -> None:
    assert connect_url(given) == expected


def test_non_http_gateway_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="--gateway"):
        connect_url("ftp://gw")


def test_metrics_render_as_prometheus_text() -> None:
    metrics = AgentMetrics()
    metrics.connections.set(1, slot="0")
    metrics.refused.inc(reason='odd"name')
    text = metrics.render()
    assert "# TYPE tether_tunnel_connections gauge" in text
    assert 'tether_tunnel_connections{slot="0"} 1' in text
    assert 'tether_tunnel_streams_refused_total{reason="odd\\"name"} 1' in text
    assert "tether_tunnel_connects_total 0" in text
    assert metrics.ready


@pytest.mark.parametrize(
    ("host", "domain", "subdomain"),
    [
        ("crm.abc.tunnels.tether.internal", "abc.tunnels.tether.internal", "crm"),
        ("eu.crm.abc.tunnels.tether.internal.", "abc.tunnels.tether.internal", "eu.crm"),
        ("CRM.ABC.tunnels.tether.internal", "abc.tunnels.tether.internal", "crm"),
    ],
)
def test_hosts_map_to_a_tunnel_domain_and_a_route(host: str, domain: str, subdomain: str) -> None:
    address = addressing.split_host(host, addressing.DEFAULT_BASE_DOMAIN)
    assert (address.domain, address.subdomain) == (domain, subdomain)


@pytest.mark.parametrize(
    "host",
    ["abc.tunnels.tether.internal", "tunnels.tether.internal", "crm.example.com", "xtunnels.tether.internal"],
)
def test_hosts_without_a_route_or_outside_the_base_are_not_tunnel_hosts(host: str) -> None:
    with pytest.raises(addressing.NotATunnelHost):
        addressing.split_host(host, addressing.DEFAULT_BASE_DOMAIN)


def test_new_domains_are_random_labels_under_the_base() -> None:
    domains = {addressing.new_domain("tunnels.example") for _ in range(50)}
    assert len(domains) == 50
    assert all(d.endswith(".tunnels.example") and len(d.split(".")[0]) == 16 for d in domains)
