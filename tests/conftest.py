"""Shared fixtures: a scripted model and a gateway, both real processes on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.support.processes import ServerProcess, running_server


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def model_server() -> Iterator[ServerProcess]:
    with running_server(["model", "--port", "0"]) as server:
        yield server


@pytest.fixture(scope="session")
def api_key() -> str:
    return "test-" + secrets.token_hex(16)


@pytest.fixture(scope="session")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("gateway")
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_MODEL_MAX_ATTEMPTS": "3",
        "TETHER_MODEL_RETRY_BASE_SECONDS": "0.01",
    }
    with running_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env) as server:
        server.data_dir = data_dir  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def client(gateway: ServerProcess, api_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=30) as sdk:
        yield sdk


class Scripts:
    """Registers scripted model turns; each test uses its own marker in the system prompt."""

    def __init__(self, model_url: str) -> None:
        self.model_url = model_url

    def add(self, turns: list[dict[str, Any]]) -> str:
        marker = "script-" + secrets.token_hex(8)
        response = httpx2.post(f"{self.model_url}/_scripts", json={"match": marker, "turns": turns})
        response.raise_for_status()
        return marker

    def requests_for(self, marker: str) -> list[dict[str, Any]]:
        received = httpx2.get(f"{self.model_url}/_requests").json()
        return [r for r in received if marker in str(r.get("system", ""))]


@pytest.fixture
def scripts(model_server: ServerProcess) -> Scripts:
    return Scripts(model_server.url)


@pytest.fixture
def environment(client: anthropic.Anthropic) -> Any:
    return client.beta.environments.create(name="test-env")


def gateway_data_dir(gateway: ServerProcess) -> Path:
    return Path(gateway.data_dir)  # type: ignore[attr-defined]


def gateway_workspaces(gateway: ServerProcess) -> Path:
    """The gateway's workspaces as the gateway sees them: as root it mounts each one (a filesystem
    image) in a mount namespace of its own, so the test looks through ``/proc/PID/root``."""
    return gateway.view(gateway_data_dir(gateway) / "workspaces")
