"""Gateway settings, read once from the environment through ``gateway.settings``.

The variables, their types, defaults and meanings are declared in ``gateway.settings`` (the
README's table is generated from there: ``python -m gateway.settings_doc``). This module turns
them into a ``Settings`` for one gateway process: it creates the data directory, resolves the
database URL against it and loads or generates the admin key.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_plus

from gateway.mcp_gateway.settings import McpGatewaySettings
from gateway.pricing import PriceTable
from gateway.settings import (
    ANTHROPIC_API_KEY,
    API_KEYS,
    DATA_DIR,
    DATABASE_URL,
    GIT_BASE_URL,
    LEASE_TTL,
    MAX_BODY_BYTES,
    MAX_UPLOAD_BYTES,
    MODEL_BASE_URL,
    MODEL_MAX_ATTEMPTS,
    MODEL_RETRY_BASE,
    MODEL_RETRY_MAX,
    MODEL_STREAM_TIMEOUT,
    OUTCOME_HEARTBEAT,
    POLICY_FILES,
    PRICES_FILE,
    PROMPT_CACHING,
    SANDBOX_ARGS,
    SANDBOX_IDLE,
    SANDBOX_START_CONCURRENCY,
    SANDBOX_START_TIMEOUT,
    SANDBOX_ZYGOTE,
    SELF_HOSTED_WAIT,
    TUNNEL_BASE_DOMAIN,
    WEBHOOK_ALLOWED_HOSTS,
    ConfigError,
)
from gateway.tools.warm_pool import warm_pool_size

SCRIPTED_MODEL_PATH = "/scripted-model"


@dataclass
class Settings:
    data_dir: Path
    api_keys: list[str]
    model_api_key: str | None = None
    model_base_url: str | None = None
    """None with no model key means: serve the scripted model inside the gateway."""
    max_body_bytes: int = 8 * 1024 * 1024
    max_upload_bytes: int = 500 * 1024 * 1024
    git_base_url: str = "https://github.com"
    """Where ``github_repository`` resources are cloned from (an on-prem or loopback Git server)."""
    max_output_tokens: int = 8192
    prompt_caching: bool = True
    """Default for agents without ``tether.prompt_caching``."""
    outcome_heartbeat_seconds: float = 10.0
    prices: PriceTable = field(default_factory=lambda: PriceTable.load(None))
    """List prices for budgets: the built-in ones with ``TETHER_PRICES_FILE`` over them."""
    model_stream_timeout: float = 120.0
    """Longest wait for the next bytes of a model stream before the attempt fails."""
    model_max_attempts: int = 4
    model_retry_base_seconds: float = 1.0
    model_retry_max_seconds: float = 30.0
    tool_timeout: float = 600.0
    policy_files: list[str] = field(default_factory=list)
    """``TETHER_POLICY_FILES`` (separated by ``:`` or ``,``) plus ``tether gateway --policy``."""
    lease_ttl_seconds: float = 15.0
    """How long a dead gateway's sessions wait before another process resumes them."""
    sandbox_args: list[str] = field(default_factory=list)
    sandbox_idle_seconds: float = 900.0
    sandbox_start_concurrency: int | None = None
    """Sandbox starts run at once on this host, the others waiting their turn; None: one per
    CPU and at least two (``gateway.tools.start_queue.default_concurrency``)."""
    sandbox_start_timeout: float = 30.0
    """Seconds a sandbox start may take once admitted, scaled by the host's load."""
    sandbox_warm_pool: int = 1
    """``TETHER_SANDBOX_WARM_POOL``: sandbox processes started ahead of need (``gateway.tools.warm_pool``)."""
    sandbox_zygote: bool = True
    """``TETHER_SANDBOX_ZYGOTE``: warm sandboxes forked from one template (``gateway.tools.zygote``)."""
    generated_key: bool = False
    """True when this start generated the admin key (it is printed only then)."""
    key_file: Path | None = None
    """Where the admin key is kept, when it is not from ``TETHER_API_KEYS``."""
    self_hosted_wait_seconds: float = 30.0
    """How long a self-hosted session's tool call waits for a worker to start its sandbox."""
    tunnel_base_domain: str = "tunnels.tether.internal"
    """Tunnels get ``<random>.<this>``; MCP URLs under a tunnel's domain go through that tunnel."""
    public_url: str = "http://127.0.0.1:8420"
    """Where sandboxes reach this gateway (set from the bound socket at start)."""
    serve_scripted_model: bool = False
    """Mount the scripted model inside the gateway (set when no model is configured)."""
    webhook_allowed_hosts: list[str] = field(default_factory=list)
    """Webhook targets allowed although internal (see ``gateway.webhooks.targets``)."""

    database_url: str = ""
    """``TETHER_DATABASE_URL``: ``postgresql://...`` or SQLite (default ``DATA_DIR/tether.db``)."""

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> Settings:
        """Raises ``ConfigError`` (one line naming the variable) for a value Tether cannot use."""
        env = os.environ
        root = Path(data_dir or DATA_DIR.read(env)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        database_url = resolve_database_url(DATABASE_URL.read(env), root)
        McpGatewaySettings.from_env(env)  # read again at start-up; checked here for a one-line error
        keys = API_KEYS.read(env)
        generated, key_file = False, None
        if not keys:
            key_file = root / "api_key"
            key, generated = load_or_create_key(key_file)
            keys = [key]
        return cls(
            data_dir=root,
            database_url=database_url,
            api_keys=keys,
            model_api_key=ANTHROPIC_API_KEY.read(env),
            model_base_url=MODEL_BASE_URL.read(env),
            max_body_bytes=MAX_BODY_BYTES.read(env),
            max_upload_bytes=MAX_UPLOAD_BYTES.read(env),
            git_base_url=GIT_BASE_URL.read(env),
            model_stream_timeout=MODEL_STREAM_TIMEOUT.read(env),
            model_max_attempts=MODEL_MAX_ATTEMPTS.read(env),
            model_retry_base_seconds=MODEL_RETRY_BASE.read(env),
            model_retry_max_seconds=MODEL_RETRY_MAX.read(env),
            prompt_caching=PROMPT_CACHING.read(env),
            prices=_prices(PRICES_FILE.read(env)),
            outcome_heartbeat_seconds=OUTCOME_HEARTBEAT.read(env),
            policy_files=POLICY_FILES.read(env),
            self_hosted_wait_seconds=SELF_HOSTED_WAIT.read(env),
            tunnel_base_domain=TUNNEL_BASE_DOMAIN.read(env),
            lease_ttl_seconds=LEASE_TTL.read(env),
            sandbox_args=SANDBOX_ARGS.read(env),
            sandbox_idle_seconds=SANDBOX_IDLE.read(env),
            sandbox_start_concurrency=SANDBOX_START_CONCURRENCY.read(env),
            sandbox_start_timeout=SANDBOX_START_TIMEOUT.read(env),
            sandbox_warm_pool=warm_pool_size(env),
            sandbox_zygote=SANDBOX_ZYGOTE.read(env),
            webhook_allowed_hosts=WEBHOOK_ALLOWED_HOSTS.read(env),
            generated_key=generated,
            key_file=key_file,
        )


def _prices(path: str | None) -> PriceTable:
    try:
        return PriceTable.load(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"TETHER_PRICES_FILE: {exc}") from None


DATABASE_FORMS = (
    "sqlite:///relative.db (inside the data dir), sqlite:////abs/path.db or postgresql://user@host/db"
)


def resolve_database_url(raw: str, data_dir: Path, *, check_parent: bool = True) -> str:
    """The store URL for ``TETHER_DATABASE_URL``: SQLite paths made absolute (``sqlite:///x.db``
    is ``DATA_DIR/x.db``, ``sqlite:////abs/x.db`` stays put), PostgreSQL URLs unchanged.

    An explicit SQLite path whose directory does not exist is an error rather than created,
    so a typo never starts an empty log somewhere unexpected.
    """
    url = raw.strip()
    if not url:
        return f"sqlite:///{data_dir / 'tether.db'}"
    if url.startswith(("postgresql://", "postgres://")):
        return url
    rest = url.removeprefix("sqlite:///")
    if rest == url or not rest.strip("/") or "?" in rest:
        raise ConfigError(f"TETHER_DATABASE_URL: unsupported {_shown(url)}; use {DATABASE_FORMS}")
    path = Path(rest) if rest.startswith("/") else data_dir / rest
    if check_parent and not path.parent.is_dir():
        raise ConfigError(
            f"TETHER_DATABASE_URL: directory {path.parent} does not exist (create it, or fix the URL)"
        )
    return f"sqlite:///{path}"


def sqlite_path(url: str) -> Path | None:
    """The file of a resolved SQLite URL; None for PostgreSQL."""
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def _shown(url: str) -> str:
    """What an error may say about a bad database URL: the scheme at most, never the rest (a
    URL or a libpq ``key=value`` string may carry a password)."""
    scheme = _SCHEME.match(url)
    if scheme is None:
        return "value (not a URL; not shown, it may hold a password)"
    name = scheme.group(1)
    return f"scheme {name!r}" if name != "sqlite" else "sqlite URL (it needs a file path and no query)"


_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_SECRET_QUERY_KEYS = frozenset({"password", "passwd", "sslpassword"})


def masked_database_url(url: str) -> str:
    """``url`` as safe to print: the userinfo password and any ``password=`` query value masked;
    something that is not a URL is not shown at all, as it may be a libpq string with a password."""
    if _SCHEME.match(url) is None:
        return "(set, not a URL: hidden)"
    head, _, fragment = url.partition("#")
    base, question, query = head.partition("?")
    scheme, _, rest = base.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    pairs = [_masked_pair(pair) for pair in query.split("&")] if question else []
    shown = f"{scheme}://{netloc}{slash}{path}" + (("?" + "&".join(pairs)) if question else "")
    return shown + ("#***" if fragment else "")


def _masked_pair(pair: str) -> str:
    key, equals, _ = pair.partition("=")
    return f"{key}=***" if equals and unquote_plus(key).lower() in _SECRET_QUERY_KEYS else pair


def webhook_allowed_hosts(env: Mapping[str, str]) -> list[str]:
    """``TETHER_WEBHOOK_ALLOWED_HOSTS``: comma-separated host names, ``*.`` wildcards, IPs and CIDRs."""
    return WEBHOOK_ALLOWED_HOSTS.read(env)


def load_or_create_key(path: Path) -> tuple[str, bool]:
    """A stable key for a data directory, readable only by its owner; True when made now."""
    if path.exists():
        return path.read_text().strip(), False
    key = "tether-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key, True
