"""The agent's configuration file: which subdomains map to which on-prem targets.

Example ``tunnel.yaml``::

    routes:
      - subdomain: crm                      # http://crm.<tunnel domain>/... arrives here
        target: http://crm.corp.local:9100  # http or https, optional path prefix
        headers:                            # added on the last hop; never cross the tunnel
          Authorization: "Bearer ${CRM_TOKEN}"
    allow:                                  # addresses the agent may connect to
      - 10.0.4.17:9100
      - 10.1.0.0/16:443

``${NAME}`` in a target or header value is replaced by the environment variable ``NAME``
(a missing variable stops the agent at start, rather than sending an empty credential).
Without an ``allow`` section, a route whose target is an IP literal allows exactly that
address and port; a route to a host name then needs an explicit ``allow`` entry.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tunnel_agent.allowlist import AllowList

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Route:
    subdomain: str
    scheme: str
    host: str
    port: int
    path_prefix: str
    headers: dict[str, str] = field(repr=False)
    """Credentials live here: kept out of ``repr`` so they never reach a log line."""

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url(self, address: str, target: str) -> str:
        """The upstream URL for an origin-form ``target``, connecting to ``address``."""
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.path_prefix}{target}"


@dataclass(frozen=True)
class AgentConfig:
    routes: dict[str, Route]
    allow: AllowList


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, os.environ if environ is None else environ)


def parse_config(data: Any, environ: Mapping[str, str]) -> AgentConfig:
    if not isinstance(data, dict) or set(data) - {"routes", "allow"}:
        raise ConfigError("the config must be a mapping with 'routes' and optionally 'allow'")
    raw_routes = data.get("routes")
    if not isinstance(raw_routes, list) or not raw_routes:
        raise ConfigError("routes: a non-empty list is required")
    routes: dict[str, Route] = {}
    for index, raw in enumerate(raw_routes):
        route = _route(raw, environ, f"routes[{index}]")
        if route.subdomain in routes:
            raise ConfigError(f"routes[{index}]: subdomain {route.subdomain!r} appears twice")
        routes[route.subdomain] = route
    allow_specs = data.get("allow")
    if allow_specs is None:
        allow_specs = [f"{_bracket(r.host)}:{r.port}" for r in routes.values() if _is_ip(r.host)]
    if not isinstance(allow_specs, list) or not all(isinstance(s, str) for s in allow_specs):
        raise ConfigError("allow: a list of 'ADDRESS[/PREFIX]:PORT' strings is required")
    try:
        allow = AllowList.parse(allow_specs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return AgentConfig(routes, allow)


def _route(raw: Any, environ: Mapping[str, str], where: str) -> Route:
    if not isinstance(raw, dict) or set(raw) - {"subdomain", "target", "headers"}:
        raise ConfigError(f"{where}: expected 'subdomain', 'target' and optional 'headers'")
    subdomain = raw.get("subdomain")
    if not isinstance(subdomain, str) or not _SUBDOMAIN.match(subdomain) or len(subdomain) > 200:
        raise ConfigError(f"{where}.subdomain: lower-case DNS labels required (e.g. 'crm')")
    target = raw.get("target")
    if not isinstance(target, str):
        raise ConfigError(f"{where}.target: a URL is required")
    parts = urlsplit(_expand(target, environ, f"{where}.target"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}.target: must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{where}.target: no credentials, query or fragment in the URL (use headers)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{where}.target: bad port") from None
    raw_headers = raw.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise ConfigError(f"{where}.headers: a mapping of header names to values is required")
    headers: dict[str, str] = {}
    for name, value in raw_headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name) or not isinstance(value, str):
            raise ConfigError(f"{where}.headers: header names and values must be strings")
        expanded = _expand(value, environ, f"{where}.headers.{name}")
        if re.search(r"[\r\n\x00]", expanded):
            raise ConfigError(f"{where}.headers.{name}: value contains a line break")
        headers[name.lower()] = expanded
    return Route(subdomain, parts.scheme, parts.hostname, port, parts.path.rstrip("/"), headers)


def _expand(value: str, environ: Mapping[str, str], where: str) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return environ[name]

    return _VARIABLE.sub(replace, value)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host
