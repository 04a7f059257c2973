"""The README's main command: ``tether demo`` runs a session end to end and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_a_session_that_writes_and_reads_a_file(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "TETHER_API_KEYS")}
    completed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
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
    assert len([p for p in (tmp_path / "workspaces").glob("sesn_*") if p.is_dir()]) == 1
    key_file = tmp_path / "api_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
