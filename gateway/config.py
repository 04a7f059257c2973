"""Gateway settings, read once from the environment with embedded defaults.

| variable               | default                                   |
|------------------------|-------------------------------------------|
| TETHER_DATA_DIR        | ``.tether`` (SQLite log, workspaces, key) |
| TETHER_DATABASE_URL    | ``sqlite:///DATA_DIR/tether.db``; or ``postgresql://...`` |
| TETHER_API_KEYS        | generated once into ``DATA_DIR/api_key``  |
| ANTHROPIC_API_KEY      | unset: the embedded scripted model        |
| TETHER_MODEL_BASE_URL  | Anthropic's API, or the scripted model    |
| TETHER_MAX_BODY_BYTES  | 8 MiB                                     |
| TETHER_MODEL_STREAM_TIMEOUT | 120 s without bytes fails an attempt |
| TETHER_MODEL_MAX_ATTEMPTS   | 4 tries per model call (429/529/5xx) |
| TETHER_MODEL_RETRY_BASE_SECONDS / _MAX_SECONDS | backoff 1 s .. 30 s |
| TETHER_PROMPT_CACHING  | ``on``: cache breakpoints in model requests (``off``: none) |
| TETHER_POLICY_FILES    | policy YAML files; an invalid one stops the start |
| TETHER_LEASE_TTL_SECONDS    | 15: a dead process's sessions resume after this |
| TETHER_SELF_HOSTED_WAIT_SECONDS | 30: wait for a worker's sandbox |
| TETHER_TUNNEL_BASE_DOMAIN | ``tunnels.tether.internal``          |
| TETHER_SANDBOX_ARGS    | extra ``tether sandbox`` flags (limits)   |
| TETHER_SANDBOX_IDLE_SECONDS | 900: stop a sandbox unused this long |
| TETHER_SANDBOX_START_CONCURRENCY | one per CPU, at least 2: sandbox starts at once |
| TETHER_SANDBOX_START_TIMEOUT_SECONDS | 30: a start's budget once admitted, times the load |
| TETHER_WEBHOOK_ALLOWED_HOSTS | none: public targets only; else hosts, ``*.``, IPs, CIDRs |
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCRIPTED_MODEL_PATH = "/scripted-model"


@dataclass
class Settings:
    data_dir: Path
    api_keys: list[str]
    model_api_key: str | None = None
    model_base_url: str | None = None
    """None with no model key means: serve the scripted model inside the gateway."""
    max_body_bytes: int = 8 * 1024 * 1024
    max_output_tokens: int = 8192
    prompt_caching: bool = True
    """Default for agents without ``tether.prompt_caching``."""
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
    generated_key: bool = False
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
        env = os.environ
        root = Path(data_dir or env.get("TETHER_DATA_DIR", ".tether")).resolve()
        root.mkdir(parents=True, exist_ok=True)
        keys = [k.strip() for k in env.get("TETHER_API_KEYS", "").split(",") if k.strip()]
        generated = False
        if not keys:
            keys, generated = [load_or_create_key(root / "api_key")], True
        return cls(
            data_dir=root,
            database_url=env.get("TETHER_DATABASE_URL") or f"sqlite:///{root / 'tether.db'}",
            api_keys=keys,
            model_api_key=env.get("ANTHROPIC_API_KEY") or None,
            model_base_url=env.get("TETHER_MODEL_BASE_URL") or None,
            max_body_bytes=int(env.get("TETHER_MAX_BODY_BYTES", 8 * 1024 * 1024)),
            model_stream_timeout=float(env.get("TETHER_MODEL_STREAM_TIMEOUT", 120)),
            model_max_attempts=max(1, int(env.get("TETHER_MODEL_MAX_ATTEMPTS", 4))),
            model_retry_base_seconds=float(env.get("TETHER_MODEL_RETRY_BASE_SECONDS", 1.0)),
            model_retry_max_seconds=float(env.get("TETHER_MODEL_RETRY_MAX_SECONDS", 30.0)),
            prompt_caching=_on_off("TETHER_PROMPT_CACHING", env.get("TETHER_PROMPT_CACHING", "on")),
            policy_files=[p for p in re.split(r"[:,]", env.get("TETHER_POLICY_FILES", "")) if p.strip()],
            self_hosted_wait_seconds=float(env.get("TETHER_SELF_HOSTED_WAIT_SECONDS", 30)),
            tunnel_base_domain=env.get("TETHER_TUNNEL_BASE_DOMAIN", "tunnels.tether.internal"),
            lease_ttl_seconds=float(env.get("TETHER_LEASE_TTL_SECONDS", 15)),
            sandbox_args=shlex.split(env.get("TETHER_SANDBOX_ARGS", "")),
            sandbox_idle_seconds=float(env.get("TETHER_SANDBOX_IDLE_SECONDS", 900)),
            sandbox_start_concurrency=_positive_int(env.get("TETHER_SANDBOX_START_CONCURRENCY")),
            sandbox_start_timeout=float(env.get("TETHER_SANDBOX_START_TIMEOUT_SECONDS", 30)),
            webhook_allowed_hosts=webhook_allowed_hosts(env),
            generated_key=generated,
        )


def _positive_int(value: str | None) -> int | None:
    """An optional count from the environment: unset or empty is None, anything else at least 1."""
    return max(1, int(value)) if value and value.strip() else None


def _on_off(name: str, value: str) -> bool:
    """A switch from the environment: ``on`` or ``off``, anything else stops the start."""
    choice = value.strip().lower()
    if choice not in ("on", "off"):
        raise ValueError(f"{name} must be on or off, not {value!r}")
    return choice == "on"


def webhook_allowed_hosts(env: Mapping[str, str]) -> list[str]:
    """``TETHER_WEBHOOK_ALLOWED_HOSTS``: comma-separated host names, ``*.`` wildcards, IPs and CIDRs."""
    return [
        entry.strip() for entry in env.get("TETHER_WEBHOOK_ALLOWED_HOSTS", "").split(",") if entry.strip()
    ]


def load_or_create_key(path: Path) -> str:
    """A stable key for a data directory, readable only by its owner."""
    if path.exists():
        return path.read_text().strip()
    key = "tether-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key
