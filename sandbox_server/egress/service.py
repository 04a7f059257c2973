"""Start and stop one sandbox's egress proxy inside the ``tether sandbox`` process.

The proxy runs on its own thread and event loop, so it works the same whether
the MCP server speaks stdio or HTTP, and its traffic never competes with
tool calls for the server's loop. Start-up is all-or-nothing and happens before
the MCP server is served: credentials fetched, CA loaded (or a throwaway one
made), socket listening. A sandbox that cannot get its credentials fails to
start rather than running without them.

Files live in a private temporary directory (``0700``): ``sandbox/`` is what
commands see (``mount``: socket, forwarder, CA bundle), ``tls/`` is scratch
space for loading certificates, never mounted. No key is kept on disk (see
``tls``), so a server killed before ``close`` leaves nothing secret behind.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from sandbox_server.egress.ca import CAError, CertificateAuthority
from sandbox_server.egress.config import EgressSettings
from sandbox_server.egress.credentials import CredentialsError, Vault, fetch_credentials
from sandbox_server.egress.gate import Gate
from sandbox_server.egress.mount import SANDBOX_PYTHON, EgressMount, prepare_mount
from sandbox_server.egress.proxy import EgressProxy
from sandbox_server.egress.resolve import Resolver
from sandbox_server.egress.tls import LeafCertificates, upstream_context

START_TIMEOUT = 10.0
log = logging.getLogger("tether.egress")


class EgressStartError(Exception):
    """The proxy could not start; the message says why and never contains a secret."""


def configure_logging() -> None:
    """Send ``tether.egress`` decisions to stderr unless the process already routes them somewhere."""
    if log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


class EgressService:
    """A running proxy; ``mount`` is what the bash backend adds to each command."""

    def __init__(self, mount: EgressMount, vault: Vault, state_dir: Path) -> None:
        self.mount = mount
        self.vault = vault
        self._state_dir = state_dir
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, settings: EgressSettings, *, token: str | None) -> EgressService:
        """Fetch credentials, prepare the sandbox directory and start serving (raises ``EgressStartError``)."""
        if not Path(SANDBOX_PYTHON).exists():
            raise EgressStartError(
                f"egress needs {SANDBOX_PYTHON} on the host (it runs the in-sandbox forwarder)"
            )
        upstream_tls = upstream_context(settings.upstream_ca)
        vault = Vault()
        if settings.credentials_url is not None:
            if not token:
                raise EgressStartError("--credentials-url needs the TETHER_EGRESS_TOKEN environment variable")
            try:
                vault = fetch_credentials(settings.credentials_url, token, verify=upstream_tls)
            except CredentialsError as exc:
                raise EgressStartError(str(exc)) from None
        state_dir = Path(tempfile.mkdtemp(prefix="tether-egress-"))
        try:
            ca = _load_ca(settings) if vault.credentials else None
            mount = prepare_mount(
                _private(state_dir / "sandbox"),
                ca_pem=ca.cert_pem if ca is not None else None,
                variables=vault.environment(),
            )
            leaves = LeafCertificates(ca, _private(state_dir / "tls")) if ca is not None else None
            gate = Gate(settings.policy(), Resolver(settings.overrides()), settings.session_id)
            proxy = EgressProxy(gate, vault=vault, leaves=leaves, upstream_tls=upstream_tls)
            service = cls(mount, vault, state_dir)
            service._run(proxy)
        except BaseException:
            shutil.rmtree(state_dir, ignore_errors=True)
            raise
        return service

    def _run(self, proxy: EgressProxy) -> None:
        """Serve ``proxy`` on a new thread; returns once its socket listens."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(proxy.start(self.mount.socket_path))
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(proxy.close())
                loop.close()

        thread = threading.Thread(target=run, name="tether-egress", daemon=True)
        thread.start()
        if not started.wait(START_TIMEOUT) or failure:
            detail = f": {failure[0]}" if failure else ""
            raise EgressStartError(f"the egress proxy did not start{detail}")
        self._loop, self._thread = loop, thread

    def close(self) -> None:
        """Stop serving, drop every connection and remove the private directory."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=START_TIMEOUT)
            self._loop = self._thread = None
        shutil.rmtree(self._state_dir, ignore_errors=True)


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def _load_ca(settings: EgressSettings) -> CertificateAuthority:
    if settings.ca_cert is None or settings.ca_key is None:
        return CertificateAuthority.generate()
    try:
        return CertificateAuthority.load(settings.ca_cert, settings.ca_key)
    except CAError as exc:
        raise EgressStartError(str(exc)) from None
