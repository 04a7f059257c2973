"""Every client command fails with one line that says the fix, never a traceback, and a
non-zero status: gateway unreachable, missing or wrong key, unknown ids, refused input; the
same for ``tether policy dry-run``; ``tether policy check`` reports every error of a file."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli
from tests.support.processes import ServerProcess

SAMPLES = [
    ("sessions", "list"),
    ("sessions", "show", "sesn_x"),
    ("sessions", "tail", "sesn_x", "--until-idle"),
    ("sessions", "export", "sesn_x"),
    ("sessions", "connect", "sesn_x"),
    ("agents", "list"),
    ("agents", "show", "agent_x", "--json"),
    ("environments", "create", "--name", "e"),
    ("vaults", "credentials", "list", "vlt_x"),
    ("tunnels", "list"),
    ("webhooks", "list"),
    ("mcp-servers", "list"),
    ("virtual-servers", "show", "x"),
]


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli.main(list(argv))
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("argv", SAMPLES, ids=[" ".join(a[:2]) for a in SAMPLES])
def test_an_unreachable_gateway_is_one_line_with_the_fix(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    code, _, err = _run(capsys, *argv, "--gateway", url, "--api-key", "k")
    assert code == 1
    assert _one_line(err) == (
        f"tether: cannot reach the gateway at {url}: connection refused — "
        "is `tether gateway` running? set --gateway or TETHER_URL"
    )


@pytest.mark.parametrize("argv", SAMPLES, ids=[" ".join(a[:2]) for a in SAMPLES])
def test_a_wrong_or_missing_key_is_one_line_with_the_fix(
    argv: tuple[str, ...],
    gateway: ServerProcess,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = _run(capsys, *argv, "--gateway", gateway.url, "--api-key", "wrong-key")
    assert code == 1
    line = _one_line(err)
    assert line.startswith(f"tether: the gateway at {gateway.url} refused the API key (HTTP 401")
    assert line.endswith("pass the gateway's key with --api-key or TETHER_API_KEY")

    monkeypatch.delenv("TETHER_API_KEY", raising=False)
    code, _, err = _run(capsys, *argv, "--gateway", gateway.url)
    assert code == 1
    assert _one_line(err) == "tether: an API key is needed: pass --api-key or set TETHER_API_KEY"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("sessions", "show", "sesn_nope"), "session 'sesn_nope' not found"),
        (("agents", "show", "agent_nope", "--json"), "agent 'agent_nope' not found"),
        (("environments", "archive", "env_nope"), "environment 'env_nope' not found"),
        (("vaults", "credentials", "list", "vlt_nope"), "vault 'vlt_nope' not found"),
    ],
)
def test_unknown_ids_are_one_line(
    argv: tuple[str, ...],
    message: str,
    gateway: ServerProcess,
    api_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = _run(capsys, *argv, "--gateway", gateway.url, "--api-key", api_key)
    assert code == 1
    line = _one_line(err)
    assert line.startswith(f"tether: {message}") and line.endswith("check the id"), line


def test_refused_input_carries_the_gateways_message(
    gateway: ServerProcess, api_key: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    connection = ("--gateway", gateway.url, "--api-key", api_key)
    code, _, err = _run(capsys, "webhooks", "create", "--url", "ftp://example.com/x", *connection)
    assert code == 1
    assert _one_line(err).startswith(f"tether: the gateway at {gateway.url} answered HTTP 400: url: ")

    code, _, err = _run(capsys, "environments", "create", *connection)
    assert (
        code == 1
        and _one_line(err) == "tether: environment create: missing --name (a flag, or the field in --file)"
    )

    bad = tmp_path / "body.yaml"
    bad.write_text("name: [unclosed\n")
    code, _, err = _run(capsys, "environments", "create", "--file", str(bad), *connection)
    assert code == 1 and _one_line(err).startswith(f"tether: {bad}:2: not valid YAML: ")

    code, _, err = _run(
        capsys, "environments", "create", "--file", str(tmp_path / "missing.json"), *connection
    )
    assert code == 1 and _one_line(err).startswith(f"tether: {tmp_path / 'missing.json'}: ")


def test_policy_dry_run_against_an_unreachable_gateway_or_with_a_wrong_key(
    gateway: ServerProcess, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules: []\n")
    url = f"http://127.0.0.1:{_closed_port()}"
    for where, key, expected in (
        (url, "k", f"tether: cannot reach the gateway at {url}: connection refused"),
        (gateway.url, "wrong-key", f"tether: the gateway at {gateway.url} refused the API key (HTTP 401"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "policy", "dry-run", str(policy), "--session", "sesn_x",
             "--gateway", where, "--api-key", key],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert result.returncode == 1
        assert _one_line(result.stderr).startswith(expected), result.stderr


def test_policy_check_reports_every_error_of_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = tmp_path / "first.yaml"
    first.write_text(
        "version: 1\n"
        "colour: blue\n"
        "rules:\n"
        "  - id: fine\n"
        "    decision: deny\n"
        "  - id: bad-decision\n"
        "    decision: maybe\n"
        "  - id: bad-key\n"
        "    decision: allow\n"
        "    tool: [bash]\n"
    )
    second = tmp_path / "second.yaml"
    second.write_text("version: 1\nrules:\n  - decision: deny\n")
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nrules:\n  - id: ok\n    decision: allow\n")

    code, _, err = _run(capsys, "policy", "check", str(first), str(second), str(good))

    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert [line.split(":")[1:3] for line in errors] == [
        [f" {first}", "2"],
        [f" {first}", "7"],
        [f" {first}", "10"],
        [f" {second}", "3"],
    ]
    assert "unknown key 'colour'" in errors[0] and "maybe" in errors[1] and "'tool'" in errors[2]
    assert "missing required key 'id'" in errors[3]
    assert err.strip().endswith("2 of 3 policy files have errors.")
