"""What each sandboxed command needs to reach the proxy: a read-only directory, variables, a prelude.

The proxy's per-sandbox directory holds the Unix socket, the forwarder script
and (when secrets are substituted) a CA bundle: the system CAs plus the egress
CA. It is bind-mounted read-only at ``SANDBOX_DIR``; the bundle is also bound
over the system bundle path, so clients that ignore ``SSL_CERT_FILE`` and
friends trust it too. No key of any kind is in this directory.

Every command's shell first runs the forwarder (``prelude``), which returns once
``127.0.0.1:3128`` listens; the proxy variables point there. ``NO_PROXY`` lists
only the sandbox's own loopback, which is private to the command (its own
network namespace): a server the command starts on localhost stays reachable
directly, and nothing else bypasses the proxy because nothing else is routable.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_DIR = "/run/tether-egress"
SOCKET_NAME = "proxy.sock"
FORWARDER_NAME = "forwarder.py"
BUNDLE_NAME = "ca-bundle.pem"
PROXY_HOST = "127.0.0.1"
PROXY_PORT = 3128
PROXY_URL = f"http://{PROXY_HOST}:{PROXY_PORT}"
NO_PROXY = "localhost,127.0.0.1,::1"
SANDBOX_PYTHON = "/usr/bin/python3"
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

PROXY_ENV = {
    "HTTP_PROXY": PROXY_URL,
    "HTTPS_PROXY": PROXY_URL,
    "http_proxy": PROXY_URL,
    "https_proxy": PROXY_URL,
    "ALL_PROXY": PROXY_URL,
    "all_proxy": PROXY_URL,
    "NO_PROXY": NO_PROXY,
    "no_proxy": NO_PROXY,
}
CA_ENV_NAMES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


@dataclass(frozen=True)
class EgressMount:
    """The sandbox side of one proxy; ``bwrap`` adds ``bwrap_args``, ``env`` and ``prelude`` to each command."""

    host_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)
    bundle: bool = False

    @property
    def socket_path(self) -> Path:
        return self.host_dir / SOCKET_NAME

    def open_fds(self) -> dict[str, int]:
        """``O_PATH`` descriptors bwrap binds from (``egress``, and ``bundle`` when there is one):
        bound by descriptor, the host directory's path never shows in the sandbox's argv."""
        flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
        fds = {"egress": os.open(self.host_dir, flags | os.O_DIRECTORY)}
        if self.bundle and SYSTEM_BUNDLE.is_file() and not SYSTEM_BUNDLE.is_symlink():
            fds["bundle"] = os.open(self.host_dir / BUNDLE_NAME, flags)
        return fds

    def bwrap_args(self, dir_fd: int, bundle_fd: int | None = None) -> list[str]:
        """Bind the directory (``open_fds``) read-only at ``SANDBOX_DIR``, and the bundle over the system one."""
        args = ["--ro-bind-fd", str(dir_fd), SANDBOX_DIR]
        if bundle_fd is not None:
            args += ["--ro-bind-fd", str(bundle_fd), str(SYSTEM_BUNDLE)]
        return args

    @property
    def prelude(self) -> str:
        """Shell lines run before the command: start the forwarder, or say why the network is missing."""
        forwarder = [
            SANDBOX_PYTHON,
            "-I",
            "-S",
            f"{SANDBOX_DIR}/{FORWARDER_NAME}",
            PROXY_HOST,
            str(PROXY_PORT),
            f"{SANDBOX_DIR}/{SOCKET_NAME}",
        ]
        return (
            f"{shlex.join(forwarder)} || "
            "printf 'tether: the egress forwarder did not start; network requests will fail\\n' >&2\n"
        )


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def prepare_mount(host_dir: Path, *, ca_pem: bytes | None, variables: Mapping[str, str]) -> EgressMount:
    """Fill ``host_dir`` (the proxy's socket directory) and describe how commands use it.

    ``ca_pem`` is the egress CA certificate when TLS may be intercepted;
    ``variables`` are the credential placeholders (``SECRET_NAME`` -> placeholder).
    """
    _write(host_dir / FORWARDER_NAME, Path(__file__).with_name(FORWARDER_NAME).read_bytes())
    env = dict(PROXY_ENV)
    if ca_pem is not None:
        system = SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.is_file() else b""
        _write(host_dir / BUNDLE_NAME, system.rstrip(b"\n") + b"\n" + ca_pem)
        env.update(dict.fromkeys(CA_ENV_NAMES, f"{SANDBOX_DIR}/{BUNDLE_NAME}"))
    env.update(variables)
    return EgressMount(host_dir, env, bundle=ca_pem is not None)
