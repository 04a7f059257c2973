"""The README's main command: ``tether demo`` runs a session end to end and exits 0, shows the
trail page while it runs, and never prints a path that is gone once it exits."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TETHER_API_KEYS")}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_demo_runs_a_session_that_writes_and_reads_a_file(tmp_path: Path) -> None:
    completed = _demo("--data-dir", str(tmp_path))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "API key (x-api-key): tether-" in out
    for event_type in (
        "agent.tool_use",
        "agent.tool_result",
        "span.model_request_end",
        "stop_reason=end_turn",
    ):
        assert event_type in out
    # The demo prints the file the agent wrote, read from the gateway's view of its workspace
    # (as root, a filesystem image mounted in the gateway's own mount namespace).
    assert "workspace file" in out
    assert out.split("workspace file", 1)[1].split(":\n", 1)[1].startswith("# Plan")
    sessions = [p for p in (tmp_path / "workspaces").glob("sesn_*") if p.is_dir()]
    assert len(sessions) == 1
    key_file = tmp_path / "api_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # The trail page of that session, and the kept data where it says.
    trail = re.search(r"Trail page .*: (http://127\.0\.0\.1:\d+)/ui#/sessions/(sesn_\w+)$", out, re.M)
    assert trail is not None, out
    assert trail.group(2) == sessions[0].name
    assert f"Data kept in {tmp_path}:" in out
    assert (tmp_path / "tether.db").is_file()


def test_a_demo_without_a_data_dir_prints_no_path_into_its_temporary_data() -> None:
    completed = _demo()

    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert re.search(r"^Trail page .*/ui#/sessions/sesn_\w+$", out, re.M), out
    assert "workspace file /workspace/notes/plan.md:\n# Plan" in out
    assert "tether-demo-" not in out  # the temporary directory's name
    assert "is removed now (`tether demo --data-dir DIR` keeps it)" in out
