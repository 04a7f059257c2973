"""Shared fixtures: a scripted model and a gateway, both real processes on loopback.

And the run's own setup (``support.provision``, ``support.pg_cluster``, ``support.leftovers``):
it installs the system packages its tests need, starts the throwaway PostgreSQL cluster they
share, and at the end stops it and fails the run if a Tether process it started survived.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.support import leftovers, pg_cluster, provision
from tests.support.processes import ServerProcess, running_server

_provisioner: provision.Provisioner | None = None


def _say(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)


def _ensure(config: pytest.Config, requirements: Sequence[provision.Requirement]) -> None:
    """Install what is missing of ``requirements``, or end the run with what to install."""
    global _provisioner
    if config.option.collectonly:
        return
    if _provisioner is None:
        _provisioner = provision.Provisioner(lambda line: _say(config, line))
    try:
        with provision.machine_lock():  # parallel workers (pytest -n) must not run apt at once
            _provisioner.ensure(requirements)
    except provision.ProvisionFailed as exc:
        # A usage error: pytest prints it once and stops, exit status 4.
        raise pytest.UsageError(f"tether tests: {exc}") from None


def pytest_sessionstart(session: pytest.Session) -> None:
    leftovers.mark_run()
    # Before collection: test modules decide at import whether bubblewrap is there.
    _ensure(session.config, provision.SANDBOX)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Provide what the selected tests need: Chromium, PostgreSQL and its throwaway cluster."""
    modules = {item.module for item in session.items if isinstance(item, pytest.Function)}
    needed = provision.needed_by(modules)
    _ensure(session.config, needed)
    if session.config.option.collectonly or provision.POSTGRESQL not in needed:
        return
    if not os.environ.get(provision.PG_DSN_ENV):
        try:
            cluster = pg_cluster.shared_cluster()
        except (OSError, RuntimeError) as exc:
            raise pytest.UsageError(
                f"tether tests: the throwaway PostgreSQL cluster did not start: {exc}"
            ) from None
        _say(session.config, f"tether tests: PostgreSQL for this run at {cluster.dsn}")


def _is_worker(config: pytest.Config) -> bool:
    """Whether this process is one of several workers of a parallel run (``pytest -n N``)."""
    return hasattr(config, "workerinput")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the run's cluster, then fail the run for every Tether process it left running.

    In a parallel run each worker stops its own cluster, and only the controller looks for
    leftovers, after every worker has ended: a worker would take its peers' live servers (they
    carry the same run mark) for leftovers.
    """
    pg_cluster.stop_shared_cluster()
    if _is_worker(session.config):
        return
    # The run's temporary directory, if it made one: orphaned sandboxes name it in their argv.
    basetemp = getattr(getattr(session.config, "_tmp_path_factory", None), "_basetemp", None)
    found = leftovers.find(leftovers.mark_run(), str(basetemp) if basetemp is not None else None)
    survivors = leftovers.still_running(found)
    if not survivors:
        return
    _say(
        session.config, f"tether tests: {len(survivors)} Tether process(es) started by this run outlived it:"
    )
    for survivor in survivors:
        _say(session.config, f"  pid {survivor.pid}: {survivor.command}")
    leftovers.kill(survivors)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
        "TETHER_OUTCOME_HEARTBEAT_SECONDS": "0.2",
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
