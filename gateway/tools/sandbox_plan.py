"""Per-session sandbox plans: where the sandbox runs, and with which flags.

Cloud environments: the environment's network policy and the session's egress secrets,
computed at every sandbox start, so a restarted sandbox gets a fresh short-lived token and
the current policy. The token travels in the child's environment, never in argv.

An egress proxy runs only where it has work: ``unrestricted`` networking needs one (it is the
sandbox's only way out, and what keeps the host's own and internal addresses out of reach), as
does ``limited`` networking that allows some host, and any session with secrets to substitute.
A ``limited`` environment that allows no host, for a session without secrets, gets no proxy and
no network at all (``--egress none``): the same outcome, without the proxy's thread, its
directory and the forwarder every command would start.

Self-hosted environments: the sandbox runs on-prem, started by the worker that holds the
session's work item, and is reached through the tunnel (``SelfHostedSandboxes``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import anyio

from gateway.resources import work
from gateway.store.base import Body, Store
from gateway.tools.sandbox import Launch, SandboxStartFailed
from gateway.tunnels import addressing
from gateway.vault.egress import environment_credentials, mint_token
from gateway.vault.keyring import KeyRing
from sandbox_server.egress import PACKAGE_MANAGER_HOSTS, TOKEN_ENV
from sandbox_server.egress.ca import ensure_ca
from tunnel_agent.work_contract import SANDBOX_ERROR, SANDBOX_URL

CREDENTIALS_PATH = "/v1/tether/egress/credentials"
DEFAULT_SELF_HOSTED_WAIT = 30.0


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
        has_secrets = bool(await environment_credentials(self.store, session))
        if networking["type"] == "limited":
            hosts = _allowed_hosts(networking, [s["url"] for s in session["agent"]["mcp_servers"]])
            if not hosts and not has_secrets:
                return Launch([*args, "--egress", "none"], {})
            args += ["--egress", "limited"]
            for host in hosts:
                args += ["--allow-host", host]
        else:
            args += ["--egress", "unrestricted"]
        env: dict[str, str] = {}
        if has_secrets:
            cert, key = ensure_ca(self.ca_dir)
            url = f"{self.gateway_url}{CREDENTIALS_PATH}?session_id={session_id}"
            args += ["--credentials-url", url, "--ca-cert", str(cert), "--ca-key", str(key)]
            env[TOKEN_ENV] = mint_token(self.keyring, session_id)
        return Launch(args, env)


class SelfHostedSandboxes:
    """``SandboxPool.locate`` for ``self_hosted`` environments.

    The session's agent toolset runs in the sandbox a worker started on-prem, at the
    ``sandbox_url`` it recorded on the session's work item. That URL's host is under the
    tunnel base domain, so the harness's ``transport_for`` carries the calls through the
    tunnel; any other URL is refused, so a work item cannot point the gateway elsewhere. Until
    a worker holds the item and has recorded the URL, a call waits up to ``wait_seconds`` (woken
    by changes to the item, re-reading every ``recheck_seconds`` for changes made through
    other replicas), then fails with a message the model can read.
    """

    def __init__(
        self,
        store: Store,
        tunnel_base_domain: str,
        wait_seconds: float = DEFAULT_SELF_HOSTED_WAIT,
        recheck_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.base_domain = addressing.check_base_domain(tunnel_base_domain)
        self.wait_seconds = wait_seconds
        self.recheck_seconds = recheck_seconds

    async def __call__(self, session_id: str) -> str | None:
        session = await self.store.get("session", session_id)
        if session is None:
            return None
        environment = await self.store.get("environment", session["environment_id"]) or {}
        if (environment.get("config") or {}).get("type") != "self_hosted":
            return None
        deadline = anyio.current_time() + self.wait_seconds
        while True:
            with work.watch(session_id) as changed:
                url = self._ready(await work.for_session(self.store, session_id))
                if url is not None:
                    return url
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    raise SandboxStartFailed(
                        "no self-hosted worker has picked up this session yet "
                        f"(waited {self.wait_seconds:g}s); is a worker running for its environment?"
                    )
                with anyio.move_on_after(min(remaining, self.recheck_seconds)):
                    await changed.wait()

    def _ready(self, item: Body | None) -> str | None:
        """The sandbox URL once a worker holds the item and has recorded one; None to wait."""
        if item is None:
            raise SandboxStartFailed("this self-hosted session has no work item")
        if item["state"] in ("stopping", "stopped"):
            raise SandboxStartFailed(
                "this session's self-hosted work was stopped; no worker runs its sandbox"
            )
        if item["state"] != "active" or not work.held(item):
            return None
        metadata = item.get("metadata") or {}
        if metadata.get(SANDBOX_ERROR):
            reason = str(metadata[SANDBOX_ERROR])[:500]
            raise SandboxStartFailed(f"the self-hosted worker could not start the sandbox: {reason}")
        url = metadata.get(SANDBOX_URL)
        if not url:
            return None
        parts = urlsplit(str(url))
        if parts.scheme not in ("http", "https") or not addressing.is_tunnel_host(
            parts.hostname or "", self.base_domain
        ):
            raise SandboxStartFailed(f"the self-hosted worker recorded {url!r}, which is not a tunnel URL")
        return str(url)
