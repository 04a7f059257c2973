"""Every environment variable Tether reads, declared once: name, type, default, meaning.

``gateway.config.Settings.from_env`` reads the gateway's own settings through these
declarations; ``gateway.settings_doc`` renders them as the README's table and prints the
effective values (``tether config show``). A few are still read where they are used (noted
in ``read_by``): the declaration here is the documented contract those reads follow.
"""

from __future__ import annotations

import shlex

from gateway.settings_types import ConfigError, Group, Setting
from gateway.settings_types import comma_list as _comma_list
from gateway.settings_types import declare as _s
from gateway.settings_types import flag as _flag
from gateway.settings_types import non_negative_int as _non_negative_int
from gateway.settings_types import on_off as _on_off
from gateway.settings_types import path_list as _path_list
from gateway.settings_types import positive_float as _positive_float
from gateway.settings_types import positive_int as _positive_int
from gateway.settings_types import text as _text

__all__ = ["GROUPS", "INTERNAL", "ConfigError", "Setting", "all_settings"]


# The gateway process --------------------------------------------------------------------------
HOST = _s(
    "TETHER_HOST", "host", "127.0.0.1", "address `tether gateway` listens on", str, read_by="gateway.cli"
)
PORT = _s(
    "TETHER_PORT",
    "int",
    8420,
    "port `tether gateway` listens on (0: any free port)",
    int,
    read_by="gateway.cli",
)
DATA_DIR = _s(
    "TETHER_DATA_DIR", "path", ".tether", "SQLite log, workspaces, generated keys (created at start)", str
)
DATABASE_URL = _s(
    "TETHER_DATABASE_URL",
    "URL",
    "",
    "`sqlite:///relative.db` (in DATA_DIR), `sqlite:////abs/path.db`, or `postgresql://user@host/db` "
    "for replicas",
    _text,
    shown="`sqlite:///tether.db` (in DATA_DIR)",
    secret=True,
)
API_KEYS = _s(
    "TETHER_API_KEYS",
    "list",
    list[str](),
    "comma-separated keys accepted in `x-api-key` (or `Authorization: Bearer`)",
    _comma_list,
    shown="one key generated into `DATA_DIR/api_key` (0600)",
    secret=True,
)
PUBLIC_URL = _s(
    "TETHER_PUBLIC_URL",
    "URL",
    None,
    "base URL the MCP gateway advertises in `WWW-Authenticate` metadata",
    str,
    shown="from the request",
    read_by="gateway.mcp_gateway.settings",
)
TLS_CERT = _s(
    "TETHER_TLS_CERT",
    "path",
    None,
    "PEM certificate chain: serve HTTPS (with `TETHER_TLS_KEY`)",
    str,
    read_by="gateway.cli",
)
TLS_KEY = _s(
    "TETHER_TLS_KEY", "path", None, "PEM private key of `TETHER_TLS_CERT`", str, read_by="gateway.cli"
)
MAX_BODY_BYTES = _s(
    "TETHER_MAX_BODY_BYTES", "int", 8 * 1024 * 1024, "request body limit (413 above it)", int, "8 MiB"
)
MAX_UPLOAD_BYTES = _s(
    "TETHER_MAX_UPLOAD_BYTES",
    "int",
    500 * 1024 * 1024,
    "`/v1/files` upload limit per file (413 above it)",
    _positive_int,
    "500 MiB",
)
GIT_BASE_URL = _s(
    "TETHER_GIT_BASE_URL",
    "URL",
    "https://github.com",
    "where `github_repository` resources are cloned from (`<base>/<owner>/<repo>.git`): an on-prem Git server",
    _text,
)
POLICY_FILES = _s(
    "TETHER_POLICY_FILES",
    "list",
    list[str](),
    "policy YAML files (`:` or `,` separated; also `--policy`); an invalid one stops the start",
    _path_list,
)
LEASE_TTL = _s(
    "TETHER_LEASE_TTL_SECONDS", "seconds", 15.0, "a dead process's sessions are resumed after this", float
)
MASTER_KEY = _s(
    "TETHER_MASTER_KEY",
    "secret",
    None,
    "vault master key, base64 of 32 bytes",
    str,
    shown="a keyring generated into `DATA_DIR/master.keys` (0600)",
    secret=True,
    read_by="gateway.app",
)
METRICS_PUBLIC = _s(
    "TETHER_METRICS_PUBLIC",
    "bool",
    False,
    "`1` serves `/metrics` without the API key",
    _flag,
    read_by="gateway.observability.metrics",
)

# The model ------------------------------------------------------------------------------------
ANTHROPIC_API_KEY = _s(
    "ANTHROPIC_API_KEY",
    "secret",
    None,
    "use Claude; unset means the embedded scripted model",
    str,
    secret=True,
)
MODEL_BASE_URL = _s(
    "TETHER_MODEL_BASE_URL",
    "URL",
    None,
    "Messages API base URL (e.g. a `tether model` process)",
    str,
    shown="Anthropic's API, or the embedded scripted model",
)
MODEL_STREAM_TIMEOUT = _s(
    "TETHER_MODEL_STREAM_TIMEOUT",
    "seconds",
    120.0,
    "seconds without bytes before a model stream counts as hung",
    float,
)
MODEL_MAX_ATTEMPTS = _s(
    "TETHER_MODEL_MAX_ATTEMPTS", "int", 4, "tries per model call on 429/529/5xx/timeouts", _positive_int
)
MODEL_RETRY_BASE = _s(
    "TETHER_MODEL_RETRY_BASE_SECONDS",
    "seconds",
    1.0,
    "first full-jitter backoff bound (`retry-after` honoured)",
    float,
)
MODEL_RETRY_MAX = _s(
    "TETHER_MODEL_RETRY_MAX_SECONDS", "seconds", 30.0, "largest backoff between model tries", float
)
PROMPT_CACHING = _s(
    "TETHER_PROMPT_CACHING",
    "on/off",
    True,
    "cache breakpoints in model requests, for agents that do not say",
    _on_off,
)
OUTCOME_HEARTBEAT = _s(
    "TETHER_OUTCOME_HEARTBEAT_SECONDS",
    "seconds",
    10.0,
    "how often `span.outcome_evaluation_ongoing` is logged while an outcome's grader works",
    _positive_float,
)
PRICES_FILE = _s(
    "TETHER_PRICES_FILE",
    "path",
    None,
    "JSON or YAML list prices ($ per million tokens by model prefix) over the built-in ones, for budgets",
    str,
)

# Sandboxes ------------------------------------------------------------------------------------
SANDBOX_ARGS = _s(
    "TETHER_SANDBOX_ARGS",
    "flags",
    list[str](),
    "extra `tether sandbox` flags for every sandbox (limits, backend)",
    shlex.split,
)
SANDBOX_IDLE = _s(
    "TETHER_SANDBOX_IDLE_SECONDS",
    "seconds",
    900.0,
    "stop a sandbox unused this long (its workspace stays)",
    float,
)
SANDBOX_START_CONCURRENCY: Setting[int | None] = _s(
    "TETHER_SANDBOX_START_CONCURRENCY",
    "int",
    None,
    "sandbox starts at once per gateway; the others queue in order",
    _positive_int,
    shown="one per CPU, at least 2",
)
SANDBOX_START_TIMEOUT = _s(
    "TETHER_SANDBOX_START_TIMEOUT_SECONDS",
    "seconds",
    30.0,
    "a start's budget once admitted, scaled by the host's load",
    float,
)
SANDBOX_WARM_POOL = _s(
    "TETHER_SANDBOX_WARM_POOL",
    "int",
    1,
    "warm sandbox processes kept ready per gateway (0 disables the pool)",
    _non_negative_int,
    read_by="gateway.tools.warm_pool",
)
SANDBOX_ZYGOTE = _s(
    "TETHER_SANDBOX_ZYGOTE",
    "bool",
    True,
    "warm sandboxes are forked from one imported template process, sharing its memory (`0`: each "
    "starts on its own)",
    _flag,
)
SANDBOX_UIDS = _s(
    "TETHER_SANDBOX_UIDS",
    "range",
    "1000000-1999999",
    "host uids sandboxes run as when Tether runs as root (one per workspace)",
    str,
    read_by="sandbox_server.server",
)

# Tunnels and self-hosted environments ----------------------------------------------------------
TUNNEL_BASE_DOMAIN = _s(
    "TETHER_TUNNEL_BASE_DOMAIN",
    "domain",
    "tunnels.tether.internal",
    "tunnels get `<random>.<this>` as their domain",
    str,
)
SELF_HOSTED_WAIT = _s(
    "TETHER_SELF_HOSTED_WAIT_SECONDS",
    "seconds",
    30.0,
    "how long a self-hosted tool call waits for a worker's sandbox",
    float,
)

# Webhooks -------------------------------------------------------------------------------------
_WEBHOOKS = "gateway.webhooks.dispatcher"
WEBHOOK_ALLOWED_HOSTS = _s(
    "TETHER_WEBHOOK_ALLOWED_HOSTS",
    "list",
    list[str](),
    "internal webhook targets allowed anyway: hosts, `*.` wildcards, IPs, CIDRs",
    _comma_list,
    shown="public targets only",
)
WEBHOOK_MAX_ATTEMPTS = _s(
    "TETHER_WEBHOOK_MAX_ATTEMPTS", "int", 6, "delivery tries per webhook event", int, read_by=_WEBHOOKS
)
WEBHOOK_RETRY_BASE = _s(
    "TETHER_WEBHOOK_RETRY_BASE_SECONDS", "seconds", 1.0, "first delivery backoff", float, read_by=_WEBHOOKS
)
WEBHOOK_RETRY_MAX = _s(
    "TETHER_WEBHOOK_RETRY_MAX_SECONDS", "seconds", 300.0, "largest delivery backoff", float, read_by=_WEBHOOKS
)
WEBHOOK_TIMEOUT = _s(
    "TETHER_WEBHOOK_TIMEOUT_SECONDS", "seconds", 10.0, "one delivery's timeout", float, read_by=_WEBHOOKS
)

# The MCP gateway ------------------------------------------------------------------------------
_MCP = "gateway.mcp_gateway.settings"
MCP_SETTINGS: tuple[Setting[object], ...] = (
    _s("TETHER_MCP_CONFIG", "path", None, "JSON or YAML file of upstreams and virtual servers applied at start", str, read_by=_MCP),
    _s("TETHER_MCP_MAX_MESSAGE_BYTES", "int", 16 * 1024 * 1024, "largest MCP message (request or response body), endpoint, upstreams and sessions", int, "16 MiB", read_by=_MCP),
    _s("TETHER_MCP_MAX_REQUEST_BYTES", "int", None, "largest request a virtual server accepts (overridable per server)", int, "the message limit", read_by=_MCP),
    _s("TETHER_MCP_CALL_TIMEOUT", "seconds", 60.0, "per-call timeout towards an upstream", float, read_by=_MCP),
    _s("TETHER_MCP_RATE_PER_MINUTE", "number", 600.0, "calls per minute per caller and virtual server", float, read_by=_MCP),
    _s("TETHER_MCP_RATE_BURST", "int", 60, "bucket size for that rate", int, read_by=_MCP),
    _s("TETHER_MCP_BREAKER_FAILURES", "int", 5, "consecutive failures that open an upstream's circuit", _positive_int, read_by=_MCP),
    _s("TETHER_MCP_BREAKER_RESET_SECONDS", "seconds", 30.0, "cool-down before a half-open probe", float, read_by=_MCP),
    _s("TETHER_MCP_CATALOG_TTL", "seconds", 300.0, "how long an upstream listing is trusted without `list_changed`", float, read_by=_MCP),
    _s("TETHER_MCP_REGISTRY_SYNC_SECONDS", "seconds", 5.0, "how often the registry is re-read (other replicas' changes)", float, read_by=_MCP),
    _s("TETHER_MCP_EXPRESS", "bool", True, "`0` sends every call through the MCP SDK instead of the express lane (docs/mcp-gateway.md)", _flag, read_by=_MCP),
    _s(
        "TETHER_MCP_JWT_SECRET", "secret", None, "HS256 secret for gateway JWTs", str,
        "derived from the vault master key", secret=True, read_by=_MCP,
    ),
)  # fmt: skip

# Observability --------------------------------------------------------------------------------
_TRACING = "gateway.observability.tracing"
OTEL_ENDPOINT = _s(
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "URL",
    None,
    "export traces over OTLP/HTTP (also `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, other `OTEL_*`)",
    str,
    shown="off",
    read_by=_TRACING,
)
OTEL_DISABLED = _s(
    "OTEL_SDK_DISABLED", "bool", False, "`true` turns trace export off", _flag, read_by=_TRACING
)

# Clients: the CLI's remote commands, the tunnel agent, the demo -------------------------------
URL = _s(
    "TETHER_URL",
    "URL",
    "http://127.0.0.1:8420",
    "gateway the remote commands talk to",
    str,
    read_by="gateway.cli",
)
API_KEY = _s(
    "TETHER_API_KEY",
    "secret",
    None,
    "key the remote commands and workers send",
    str,
    secret=True,
    read_by="gateway.cli",
)
TUNNEL_TOKEN = _s(
    "TETHER_TUNNEL_TOKEN",
    "secret",
    None,
    "`tether tunnel`'s token (keeps it out of `ps`)",
    str,
    secret=True,
    read_by="tunnel_agent.cli",
)
DEMO_MODEL = _s(
    "TETHER_DEMO_MODEL",
    "string",
    "claude-sonnet-4-6",
    "model `tether demo` asks for",
    str,
    read_by="gateway.demo",
)
DEMO_VERBOSE = _s(
    "TETHER_DEMO_VERBOSE",
    "bool",
    False,
    "`tether demo` also prints the gateway's log",
    _flag,
    read_by="gateway.demo",
)


GROUPS: tuple[Group, ...] = (
    Group(
        "Gateway",
        (HOST, PORT, DATA_DIR, DATABASE_URL, API_KEYS, PUBLIC_URL, TLS_CERT, TLS_KEY, MAX_BODY_BYTES,
         MAX_UPLOAD_BYTES, GIT_BASE_URL, POLICY_FILES, LEASE_TTL, MASTER_KEY, METRICS_PUBLIC),
    ),
    Group(
        "Model",
        (ANTHROPIC_API_KEY, MODEL_BASE_URL, MODEL_STREAM_TIMEOUT, MODEL_MAX_ATTEMPTS, MODEL_RETRY_BASE,
         MODEL_RETRY_MAX, PROMPT_CACHING, PRICES_FILE, OUTCOME_HEARTBEAT),
    ),
    Group(
        "Sandboxes",
        (SANDBOX_ARGS, SANDBOX_IDLE, SANDBOX_START_CONCURRENCY, SANDBOX_START_TIMEOUT, SANDBOX_WARM_POOL,
         SANDBOX_ZYGOTE, SANDBOX_UIDS),
    ),
    Group("Tunnels and self-hosted environments", (TUNNEL_BASE_DOMAIN, SELF_HOSTED_WAIT)),
    Group(
        "Webhooks",
        (WEBHOOK_ALLOWED_HOSTS, WEBHOOK_MAX_ATTEMPTS, WEBHOOK_RETRY_BASE, WEBHOOK_RETRY_MAX, WEBHOOK_TIMEOUT),
    ),
    Group("MCP gateway", MCP_SETTINGS),
    Group("Observability", (OTEL_ENDPOINT, OTEL_DISABLED)),
    Group("Clients (CLI, tunnel agent, demo)", (URL, API_KEY, TUNNEL_TOKEN, DEMO_MODEL, DEMO_VERBOSE)),
)  # fmt: skip

INTERNAL = frozenset(
    {"TETHER_SANDBOX_TOKEN", "TETHER_EGRESS_TOKEN", "TETHER_SANDBOX_PARENT", "TETHER_PRIVATE_MOUNTS"}
)
"""Variables one Tether process hands to another it starts; not for operators to set."""


def all_settings() -> list[Setting[object]]:
    return [setting for group in GROUPS for setting in group.settings]
