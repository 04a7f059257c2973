"""The container images, built from ``deploy/docker`` and run on a real Docker engine.

The engine is the suite's own (``support.docker_engine``): Debian's ``dockerd`` on a private
socket, a base image made with ``debootstrap`` (no registry is reachable), both kept in a
cache so a second run reuses the base image and the build cache. The gateway image must
become healthy through its own ``HEALTHCHECK``, serve the official SDK, and run as a
non-root user; the tunnel agent image must dial that gateway as a worker and report ready.
"""

from __future__ import annotations

import glob
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.support.docker_engine import Engine, base_image, start_engine
from tests.support.self_hosted import worker_key

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_IMAGE = "tether-test/gateway:dev"
TUNNEL_IMAGE = "tether-test/tunnel-agent:dev"
BUILD_TIMEOUT = 1500.0
HEALTHY_TIMEOUT = 120.0
# A cold machine installs the engine and builds the base image inside these module fixtures.
pytestmark = pytest.mark.timeout(BUILD_TIMEOUT + 600)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = start_engine()
    try:
        yield engine
    finally:
        survivors = engine.stop()
        assert survivors == [], f"dockerd left processes running: {survivors}"
        assert not engine.exec_root.exists(), "the engine's exec root (and its mounts) outlived it"


def _pip_options() -> str:
    """The host's pip index settings that a container can reach (http/https, not file://)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    options = []
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name not in ("index-url", "extra-index-url"):
            continue
        for url in value.strip("'\"").split():
            if url.startswith(("http://", "https://")):
                options.append(f"--{name} {url}")
    return " ".join(options)


def _extra_ca_certs() -> str:
    """The CAs this host trusts beyond Debian's set (a TLS-intercepting egress proxy's, here)."""
    return "\n".join(
        Path(path).read_text() for path in sorted(glob.glob("/usr/local/share/ca-certificates/*.crt"))
    )


def _build(engine: Engine, dockerfile: str, tag: str) -> None:
    engine.docker(
        "build",
        "--network",
        "host",
        "-f",
        str(ROOT / "deploy" / "docker" / dockerfile),
        "--build-arg",
        f"BASE={base_image(engine)}",
        "--build-arg",
        f"PIP_OPTIONS={_pip_options()}",
        "--build-arg",
        f"EXTRA_CA_CERTS={_extra_ca_certs()}",
        "-t",
        tag,
        str(ROOT),
        timeout=BUILD_TIMEOUT,
    )


@pytest.fixture(scope="module")
def images(engine: Engine) -> dict[str, str]:
    _build(engine, "gateway.Dockerfile", GATEWAY_IMAGE)
    _build(engine, "tunnel-agent.Dockerfile", TUNNEL_IMAGE)
    return {"gateway": GATEWAY_IMAGE, "tunnel": TUNNEL_IMAGE}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _inspect(engine: Engine, container: str) -> dict:
    return json.loads(engine.docker("inspect", container).stdout)[0]


def _wait_healthy(engine: Engine, container: str) -> dict:
    """Poll the container's own health check until it says healthy (the image's HEALTHCHECK)."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    while True:
        state = _inspect(engine, container)["State"]
        if state.get("Health", {}).get("Status") == "healthy":
            return state
        if not state["Running"] or time.monotonic() > deadline:
            logs = engine.docker("logs", container, check=False)
            pytest.fail(f"{container} not healthy ({state}):\n{logs.stdout}\n{logs.stderr}")
        time.sleep(0.5)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


@pytest.fixture(scope="module")
def gateway_container(engine: Engine, images: dict[str, str]) -> Iterator[tuple[str, str, str]]:
    """The gateway image running on a free loopback port: (container, URL, API key)."""
    port, key = _free_port(), "sk-image-" + secrets.token_hex(8)
    name = "tether-gateway-" + secrets.token_hex(4)
    engine.docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--health-interval",
        "1s",
        "-e",
        "TETHER_HOST=127.0.0.1",
        "-e",
        f"TETHER_PORT={port}",
        "-e",
        f"TETHER_API_KEYS={key}",
        images["gateway"],
    )
    try:
        yield name, f"http://127.0.0.1:{port}", key
    finally:
        engine.docker("rm", "-f", name, check=False)


def test_gateway_image_is_healthy_serves_the_sdk_and_runs_as_non_root(
    engine: Engine, gateway_container: tuple[str, str, str]
) -> None:
    name, url, key = gateway_container
    state = _wait_healthy(engine, name)
    assert _inspect(engine, name)["Config"]["User"] == "tether"
    assert _uid_of(state["Pid"]) != 0, "the gateway process runs as root"
    assert engine.docker("exec", name, "id", "-u").stdout.strip() != "0"
    with anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client:
        agent = client.beta.agents.create(name="from-the-image", model="claude-sonnet-4-6")
        listed = [a.id for a in client.beta.agents.list()]
    assert agent.id in listed
    assert agent.name == "from-the-image"


def test_tunnel_agent_image_dials_the_gateway_as_a_worker(
    engine: Engine, images: dict[str, str], gateway_container: tuple[str, str, str]
) -> None:
    gateway, url, key = gateway_container
    _wait_healthy(engine, gateway)
    with anthropic.Anthropic(base_url=url, api_key=key, max_retries=0) as client:
        environment = client.beta.environments.create(name="image-onprem", config={"type": "self_hosted"})
        tunnel = client.beta.tunnels.create(display_name="image-site")
        token = client.beta.tunnels.reveal_token(tunnel.id).tunnel_token
    worker = worker_key(url, key, environment.id, tunnel.id)  # the image refuses an admin key
    admin_port = _free_port()
    name = "tether-tunnel-" + secrets.token_hex(4)
    engine.docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "host",
        "--health-interval",
        "1s",
        "-e",
        f"TETHER_API_KEY={worker}",
        "-e",
        f"TETHER_TUNNEL_TOKEN={token}",
        "-e",
        f"TETHER_TUNNEL_ADMIN_PORT={admin_port}",
        images["tunnel"],
        "--gateway",
        url,
        "--environment",
        environment.id,
        "--tunnel-id",
        tunnel.id,
        "--admin-port",
        str(admin_port),
    )
    try:
        # Healthy means the agent's /ready answered 200: at least one tunnel connection is up.
        state = _wait_healthy(engine, name)
        assert _uid_of(state["Pid"]) != 0
    finally:
        engine.docker("rm", "-f", name, check=False)
