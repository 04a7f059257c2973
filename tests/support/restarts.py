"""Gateways restarted (or run side by side) on one database, on each backend.

Fixtures for crash and wake-up tests: ``database_url`` is parametrised over SQLite and a
fresh PostgreSQL database; ``launch`` starts a gateway process on it each time it is called,
with a short lease so a killed process's sessions are resumed quickly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anthropic
import pytest

from tests.support.postgres import fresh_database_sync
from tests.support.processes import ServerProcess, running_server, start_server

LEASE_TTL = "1.5"


def shared_database_env(
    api_key: str, model_url: str, database_url: str, fast_recovery: bool = False
) -> dict[str, str]:
    """A gateway's environment on a database it shares with others; ``fast_recovery`` gives a
    short lease and quick model retries, so a killed process's sessions resume at once."""
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_url,
        "TETHER_DATABASE_URL": database_url,
    }
    if fast_recovery:
        env |= {"TETHER_LEASE_TTL_SECONDS": LEASE_TTL, "TETHER_MODEL_RETRY_BASE_SECONDS": "0.01"}
    return env


@contextmanager
def two_gateways_on_postgres(
    tmp_path: Path, model_url: str, api_key: str
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two gateway processes (replicas) on one fresh PostgreSQL database."""
    with fresh_database_sync() as dsn:
        env = shared_database_env(api_key, model_url, dsn)
        args = ["gateway", "--port", "0", "--data-dir"]
        with (
            running_server([*args, str(tmp_path / "a")], env) as first,
            running_server([*args, str(tmp_path / "b")], env) as second,
        ):
            yield first, second


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}"
    else:
        with fresh_database_sync() as dsn:
            yield dsn


@pytest.fixture
def launch(
    tmp_path: Path, model_server: ServerProcess, api_key: str, database_url: str
) -> Iterator[Callable[[], ServerProcess]]:
    """Start gateways that share one database, like restarts or replicas."""
    started: list[ServerProcess] = []
    env = shared_database_env(api_key, model_server.url, database_url, fast_recovery=True)

    def start() -> ServerProcess:
        server = start_server(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data")], env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def sdk_client(server: ServerProcess, api_key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=api_key, max_retries=0, timeout=30)
