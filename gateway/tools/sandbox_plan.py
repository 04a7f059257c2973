"""Per-session sandbox flags: the environment's network policy and the session's egress secrets.

Computed at every sandbox start, so a restarted sandbox gets a fresh short-lived token
and the current policy. The token travels in the child's environment, never in argv.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from gateway.store.base import Store
from gateway.tools.sandbox import Launch
from gateway.vault.egress import environment_credentials, mint_token
from gateway.vault.keyring import KeyRing
from sandbox_server.egress import PACKAGE_MANAGER_HOSTS, TOKEN_ENV
from sandbox_server.egress.ca import ensure_ca

CREDENTIALS_PATH = "/v1/tether/egress/credentials"


def _allowed_hosts(networking: dict[str, object], mcp_urls: list[str]) -> list[str]:
    hosts = [str(h) for h in networking.get("allowed_hosts") or []]  # type: ignore[attr-defined]
    if networking.get("allow_mcp_servers"):
        hosts += [urlsplit(url).hostname or "" for url in mcp_urls]
    if networking.get("allow_package_managers"):
        hosts += list(PACKAGE_MANAGER_HOSTS)
    return sorted({h for h in hosts if h})


class SandboxPlanner:
    def __init__(self, store: Store, keyring: KeyRing, gateway_url: str, data_dir: Path) -> None:
        self.store = store
        self.keyring = keyring
        self.gateway_url = gateway_url
        self.ca_dir = data_dir / "egress-ca"

    async def __call__(self, session_id: str) -> Launch:
        session = await self.store.get("session", session_id)
        if session is None:
            return Launch(["--egress", "none"], {})
        environment = await self.store.get("environment", session["environment_id"]) or {}
        networking = (environment.get("config") or {}).get("networking") or {"type": "unrestricted"}
        args = ["--session-id", session_id]
        if networking["type"] == "limited":
            args += ["--egress", "limited"]
            for host in _allowed_hosts(networking, [s["url"] for s in session["agent"]["mcp_servers"]]):
                args += ["--allow-host", host]
        else:
            args += ["--egress", "unrestricted"]
        env: dict[str, str] = {}
        if await environment_credentials(self.store, session):
            cert, key = ensure_ca(self.ca_dir)
            url = f"{self.gateway_url}{CREDENTIALS_PATH}?session_id={session_id}"
            args += ["--credentials-url", url, "--ca-cert", str(cert), "--ca-key", str(key)]
            env[TOKEN_ENV] = mint_token(self.keyring, session_id)
        return Launch(args, env)
