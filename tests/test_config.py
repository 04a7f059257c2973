"""Configuration: one declared, documented set of settings, database URLs that mean what they
say, and an admin key shown only when it is made."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import INTERNAL, all_settings
from gateway.settings_doc import readme_region, settings_table
from tests.support.processes import running_server

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("gateway", "sandbox_server", "tunnel_agent", "policies")
BASE_ENV = {"TETHER_API_KEYS": "", "ANTHROPIC_API_KEY": "", "TETHER_DATABASE_URL": ""}


def test_the_readme_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()

    assert readme_region(readme) == settings_table(), (
        "README.md's settings table is stale: run `python -m gateway.settings_doc --write`"
    )


def test_every_variable_the_code_reads_is_declared() -> None:
    """A ``"TETHER_..."`` literal anywhere in the code is a setting someone reads: it must be in
    ``gateway.settings`` (and so in the README) unless it is a process-to-process handoff."""
    declared = {setting.name for setting in all_settings()}
    used: dict[str, str] = {}
    for package in SOURCES:
        for path in (ROOT / package).rglob("*.py"):
            for name in re.findall(r"[\"'](TETHER_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()):
                used.setdefault(name, str(path.relative_to(ROOT)))

    undeclared = {name: where for name, where in used.items() if name not in declared | INTERNAL}

    assert not undeclared, f"declare these in gateway/settings.py: {undeclared}"
    assert {"TETHER_HOST", "TETHER_PORT", "TETHER_PUBLIC_URL", "TETHER_MCP_CONFIG"} <= declared


def test_declared_defaults_agree_with_the_code_that_reads_elsewhere() -> None:
    """Settings still read outside ``gateway.config`` must default to what the table says."""
    from gateway.mcp_gateway.settings import McpGatewaySettings
    from gateway.tools.warm_pool import warm_pool_size
    from sandbox_server.identity import DEFAULT_UID_RANGE

    declared = {setting.name: setting.default for setting in all_settings()}
    mcp = McpGatewaySettings.from_env({})
    fields = {
        "TETHER_MCP_MAX_MESSAGE_BYTES": mcp.max_message_bytes,
        "TETHER_MCP_CALL_TIMEOUT": mcp.call_timeout,
        "TETHER_MCP_RATE_PER_MINUTE": mcp.rate_per_minute,
        "TETHER_MCP_RATE_BURST": mcp.rate_burst,
        "TETHER_MCP_BREAKER_FAILURES": mcp.breaker_failures,
        "TETHER_MCP_BREAKER_RESET_SECONDS": mcp.breaker_reset_seconds,
        "TETHER_MCP_CATALOG_TTL": mcp.catalog_ttl,
        "TETHER_MCP_REGISTRY_SYNC_SECONDS": mcp.registry_sync_seconds,
        "TETHER_SANDBOX_WARM_POOL": warm_pool_size({}),
    }

    assert {name: declared[name] for name in fields} == fields
    assert mcp.max_request_bytes == mcp.max_message_bytes  # "the message limit"
    low, high = map(int, str(declared["TETHER_SANDBOX_UIDS"]).split("-"))
    assert range(low, high + 1) == DEFAULT_UID_RANGE


def test_config_show_masks_secrets() -> None:
    env = {
        **BASE_ENV,
        "TETHER_API_KEYS": "tether-very-secret-key",
        "TETHER_DATABASE_URL": "postgresql://tether:hunter2@db.internal:5432/tether",
        "TETHER_PORT": "9999",
        "PATH": "/usr/bin:/bin",
    }
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )

    assert shown.returncode == 0, shown.stderr
    assert "tether-very-secret-key" not in shown.stdout and "hunter2" not in shown.stdout
    assert re.search(r"^TETHER_API_KEYS +=\s+\(set, hidden\)$", shown.stdout, re.M)
    assert "postgresql://tether:***@db.internal:5432/tether" in shown.stdout
    assert re.search(r"^TETHER_PORT +=\s+9999$", shown.stdout, re.M)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://tether@db/tether?password=hunter2", "postgresql://tether@db/tether?password=***"),
        (
            "postgres://u:hunter2@db/t?sslmode=require&PASSWORD=hunter2",
            "postgres://u:***@db/t?sslmode=require&PASSWORD=***",
        ),
        ("host=db password=hunter2", "(set, not a URL: hidden)"),
    ],
)
def test_config_show_never_prints_a_database_password(url: str, expected: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**BASE_ENV, "TETHER_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        cwd=ROOT,
    )

    assert "hunter2" not in shown.stdout + shown.stderr
    assert re.search(rf"^TETHER_DATABASE_URL +=\s+{re.escape(expected)}$", shown.stdout, re.M), shown.stdout


def test_a_database_url_that_is_not_a_url_is_never_echoed(tmp_path: Path) -> None:
    secret = "host=db password=hunter2"
    (tmp_path / "data").mkdir()
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "audit",
            "verify",
            "sesn_x",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "TETHER_DATABASE_URL": secret},
    )
    gateway = _gateway_fails(tmp_path, secret)

    for failed in (audit, gateway):
        assert failed.returncode != 0
        assert "hunter2" not in failed.stdout + failed.stderr
        assert "TETHER_DATABASE_URL: unsupported value (not a URL" in failed.stderr, failed.stderr


def test_config_show_and_the_gateway_refuse_a_bad_warm_pool_alike(tmp_path: Path) -> None:
    env = {**_env(), "TETHER_SANDBOX_WARM_POOL": "-1"}
    shown = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "config", "show"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    started = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "gateway", "--port", "0", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )

    line = re.search(r"^TETHER_SANDBOX_WARM_POOL += INVALID: (.+)$", shown.stdout, re.M)
    assert shown.returncode == 1 and line, shown.stdout
    assert started.returncode != 0
    assert started.stderr.strip().splitlines() == [f"tether: {line.group(1)}"]
    assert "0 or more" in line.group(1)


# SQLite URLs, through `tether gateway` -----------------------------------------------------------
def _gateway_fails(tmp_path: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "gateway", "--port", "0", "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_env(), "TETHER_DATABASE_URL": database_url},
    )


def _env() -> dict[str, str]:
    import os

    return {**os.environ, **BASE_ENV, "PYTHONUNBUFFERED": "1"}


def test_a_relative_sqlite_url_lands_in_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {**BASE_ENV, "TETHER_DATABASE_URL": "sqlite:///relative-test.db"}

    with running_server(["gateway", "--port", "0", "--data-dir", str(data)], env):
        assert (data / "relative-test.db").is_file()

    assert not Path("/relative-test.db").exists()


def test_an_absolute_sqlite_url_stays_absolute(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**BASE_ENV, "TETHER_DATABASE_URL": f"sqlite:///{elsewhere / 'log.db'}"}  # four slashes

    with running_server(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data")], env):
        assert (elsewhere / "log.db").is_file()

    assert not (tmp_path / "data" / "tether.db").exists()


def test_a_missing_sqlite_directory_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"

    failed = _gateway_fails(tmp_path, f"sqlite:///{missing / 'x.db'}")

    assert failed.returncode != 0
    assert failed.stderr.strip().splitlines() == [
        f"tether: TETHER_DATABASE_URL: directory {missing} does not exist (create it, or fix the URL)"
    ]
    assert not missing.exists()
    assert (tmp_path / "data").is_dir()  # the data dir itself is still created


@pytest.mark.parametrize(
    "url", ["mysql://tether@db/tether", "sqlite://db-host/x.db", "sqlite:///", "tether.db"]
)
def test_an_unsupported_database_url_is_one_line_naming_the_accepted_forms(tmp_path: Path, url: str) -> None:
    failed = _gateway_fails(tmp_path, url)

    assert failed.returncode != 0
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    assert lines[0].startswith("tether: TETHER_DATABASE_URL: unsupported")
    for form in ("sqlite:///relative.db", "sqlite:////abs/path.db", "postgresql://"):
        assert form in lines[0]


# The admin key ----------------------------------------------------------------------------------
def _key_lines(output: list[str]) -> list[str]:
    return [line for line in output if line.startswith("API key")]


def test_the_admin_key_is_printed_only_when_generated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["gateway", "--port", "0", "--data-dir", str(data)]

    with running_server(args, BASE_ENV) as first:
        first_lines = _key_lines(first.output)
    key = (data / "api_key").read_text().strip()
    with running_server(args, BASE_ENV) as second:
        second_lines = _key_lines(second.output)

    assert first_lines == [f"API key (x-api-key): {key}  (stored in {data / 'api_key'})"]
    assert second_lines == [f"API key (x-api-key): kept  (stored in {data / 'api_key'})"]
    assert not any(key in line for line in second.output)
