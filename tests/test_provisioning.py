"""The test run's own setup: what it installs and how, its PostgreSQL, and leftover processes.

The install decisions are checked against fake hosts (a fake ``which``), since this machine
has everything installed; the leftover check runs a real inner pytest session that leaks a
real server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.support import leftovers, pg_cluster, provision
from tests.support.postgres import fresh_database

REPO_ROOT = Path(__file__).resolve().parent.parent


def fake_host(
    installed: set[str], *, euid: int = 0, sudo: bool = False, env: dict[str, str] | None = None
) -> provision.Host:
    """A host on which only ``installed`` exist: program names for ``which``, paths otherwise."""
    return provision.Host(
        which=lambda name: f"/usr/bin/{name}" if name in installed else None,
        executable=lambda path: path in installed,
        glob=lambda pattern: sorted(p for p in installed if p.endswith("/bin/initdb")),
        env=env or {},
        euid=euid,
        passwordless_sudo=lambda: sudo,
        playwright_driver_runs=lambda: "libatomic.so.1" in installed,
    )


EVERYTHING = {
    "apt-get",
    "bwrap",
    "curl",
    "/usr/bin/chromium",
    "libatomic.so.1",
    "/usr/lib/postgresql/15/bin/initdb",
}
ALL = [*provision.SANDBOX, provision.CHROMIUM, provision.PLAYWRIGHT_DRIVER, provision.POSTGRESQL]


def test_nothing_is_done_when_everything_is_installed() -> None:
    assert provision.plan(ALL, fake_host(EVERYTHING)) == provision.Plan()


def test_root_installs_what_is_missing_with_apt_get() -> None:
    decided = provision.plan(
        ALL, fake_host({"apt-get", "curl", "libatomic.so.1", "/usr/lib/postgresql/15/bin/initdb"})
    )
    assert decided.failure is None
    assert decided.missing == (provision.BUBBLEWRAP, provision.CHROMIUM)
    assert decided.commands == (
        ("apt-get", "update", "-q"),
        ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "bubblewrap", "chromium"),
    )


def test_apt_lists_are_refreshed_once_per_run() -> None:
    decided = provision.plan([provision.POSTGRESQL], fake_host({"apt-get"}), updated=True)
    assert [command[-1] for command in decided.commands] == ["postgresql"]


def test_a_user_with_passwordless_sudo_installs_through_it() -> None:
    decided = provision.plan([provision.BUBBLEWRAP], fake_host({"apt-get", "sudo"}, euid=1000, sudo=True))
    assert all(command[:2] == ("sudo", "-n") for command in decided.commands)


def test_without_a_way_to_install_the_run_names_what_to_install() -> None:
    host = fake_host({"apt-get", "sudo", "bwrap", "curl"}, euid=1000, sudo=False)
    decided = provision.plan(ALL, host)
    assert decided.commands == ()
    assert decided.failure is not None
    assert "`sudo apt-get install -y chromium libatomic1 postgresql`" in decided.failure
    assert "not root, no passwordless sudo" in decided.failure
    assert provision.PG_DSN_ENV in decided.failure
    no_apt = provision.plan([provision.BUBBLEWRAP], fake_host(set()))
    assert no_apt.failure is not None and "apt-get is not available" in no_apt.failure


def test_a_configured_server_or_chromium_needs_no_package() -> None:
    host = fake_host(
        {"bwrap", "curl", "/opt/chrome", "libatomic.so.1"},
        env={provision.PG_DSN_ENV: "postgresql://x/y", "TETHER_TEST_CHROMIUM": "/opt/chrome"},
    )
    assert provision.plan(ALL, host) == provision.Plan()


def test_only_what_the_selected_modules_use_is_needed() -> None:
    def module(**names: object) -> types.ModuleType:
        made = types.ModuleType("test_x")
        vars(made).update(names)
        return made

    browser = module(sync_playwright=types.SimpleNamespace(__module__="playwright.sync_api"))
    database = module(postgres=types.ModuleType("tests.support.postgres"))
    plain = module(os=os, Path=Path)
    assert provision.needed_by([plain]) == []
    browser_needs = [provision.CHROMIUM, provision.PLAYWRIGHT_DRIVER]
    assert provision.needed_by([browser]) == browser_needs
    assert provision.needed_by([plain, database, browser]) == [*browser_needs, provision.POSTGRESQL]


class FakeApt:
    """Runs nothing: records each command and, on install, makes the packages appear."""

    def __init__(self, installed: set[str], fail: bool = False, installs: bool = True) -> None:
        self.installed, self.fail, self.installs = installed, fail, installs
        self.commands: list[Sequence[str]] = []

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        if "install" in command and self.installs:
            self.installed |= {"bwrap", "/usr/bin/chromium"}
        return subprocess.CompletedProcess(command, 100 if self.fail else 0, "", "E: no such package")


def test_the_provisioner_installs_updates_once_and_reports() -> None:
    installed = {"apt-get"}
    apt, said = FakeApt(installed), []
    provisioner = provision.Provisioner(said.append, fake_host(installed), apt)
    provisioner.ensure([provision.BUBBLEWRAP])
    provisioner.ensure([provision.BUBBLEWRAP, provision.CHROMIUM])  # bwrap is there now
    installed.discard("/usr/bin/chromium")
    provisioner.ensure([provision.CHROMIUM])
    assert [command[-1] for command in apt.commands] == ["-q", "bubblewrap", "chromium"]
    assert said[0] == "tether tests: installing bubblewrap with apt-get (missing here; once per machine) ..."


def test_a_failed_or_ineffective_install_stops_the_run() -> None:
    with pytest.raises(provision.ProvisionFailed, match="failed \\(100\\):\nE: no such package"):
        provision.Provisioner(print, fake_host({"apt-get"}), FakeApt({"apt-get"}, fail=True)).ensure(ALL)
    with pytest.raises(provision.ProvisionFailed, match="yet bwrap is still missing"):
        provision.Provisioner(print, fake_host({"apt-get"}), FakeApt({"apt-get"}, installs=False)).ensure(
            [provision.BUBBLEWRAP]
        )


@pytest.mark.anyio
async def test_databases_live_in_the_runs_own_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(provision.PG_DSN_ENV, raising=False)
    monkeypatch.delenv("TETHER_TEST_POSTGRES", raising=False)
    cluster = pg_cluster.shared_cluster()
    async with fresh_database() as dsn:
        assert urlsplit(dsn).port == cluster.port != 5432
        connection = await asyncpg.connect(dsn)
        try:
            assert await connection.fetchval("SHOW data_directory") == str(cluster.data_dir)
        finally:
            await connection.close()


def test_tether_servers_are_told_from_other_processes() -> None:
    python = sys.executable
    assert leftovers.is_tether_server([python, "-m", "gateway.cli", "gateway", "--port", "0"])
    assert leftovers.is_tether_server([python, "-m", "sandbox_server.launch", "sandbox"])
    assert leftovers.is_tether_server([python, "/work/.venv/bin/tether", "demo"])
    assert not leftovers.is_tether_server([python, "-m", "pytest", "-q"])
    assert not leftovers.is_tether_server(["/usr/lib/postgresql/15/bin/postgres", "-D", "x"])


def test_a_server_left_running_fails_the_run_and_is_stopped(tmp_path: Path) -> None:
    leaky = tmp_path / "test_leaky.py"
    leaky.write_text(
        textwrap.dedent(
            """
            from tests.support.processes import start_server

            def test_leaves_a_model_server_running():
                server = start_server(["model", "--port", "0"])
                print("LEFT", server.process.pid)
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != leftovers.RUN_ENV}
    inner = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            str(leaky),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert inner.returncode == 1, inner.stdout + inner.stderr
    assert "1 passed" in inner.stdout
    pid = int(inner.stdout.split("LEFT ", 1)[1].split()[0])
    assert f"pid {pid}: {sys.executable} -m gateway.cli model --port 0" in inner.stdout
    assert "Tether process(es) started by this run outlived it" in inner.stdout
    assert not leftovers.still_running([leftovers.Leftover(pid, "")], grace=10)
