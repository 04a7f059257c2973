"""Gateway start-up: ``tether gateway`` listens promptly, and importing the app does no work.

Wall-clock bounds on a shared two-core machine are flaky, so the bound that matters is the CPU
the gateway spends before its ready line (what start-up costs it, whatever else runs); the wall
clock gets a generous bound only. ``bench/sandbox_start.py`` measures the real figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import ServerProcess, running_server

CPU_BOUND = 5.0
"""CPU seconds until listening: imports (the ``mcp`` SDK is most of it; ``anthropic`` waits for
the first model call) and the lifespan, about 1.5 s here, with room for slow machines."""
WALL_BOUND = 120.0

_IMPORT = """
import json, os, sys, threading
before = set(os.listdir("."))
threads = threading.active_count()
import gateway.app
print(json.dumps({
    "modules": sorted(sys.modules),
    "new_files": sorted(set(os.listdir(".")) - before),
    "threads": threading.active_count() - threads,
}))
"""
LAZY = (
    "anthropic",  # about two CPU-seconds: imported by the first model call
    "docker",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "playwright",
    "sandbox_server.egress.service",
)
"""Optional parts a gateway must not import until a feature needs them."""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def test_importing_the_gateway_app_loads_no_optional_part_and_does_no_work(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    modules = found["modules"]
    assert "gateway.app" in modules
    assert not [m for m in modules if any(m == lazy or m.startswith(lazy + ".") for lazy in LAZY)]
    assert found["new_files"] == [] and found["threads"] == 0


def test_tether_gateway_is_listening_within_its_start_up_budget(
    tmp_path: Path, model_server: ServerProcess
) -> None:
    env = {
        "TETHER_API_KEYS": "test-startup",
        "TETHER_MODEL_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_SANDBOX_WARM_POOL": "0",
    }
    started = time.monotonic()
    with running_server(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data")], env) as server:
        wall = time.monotonic() - started
        cpu = _cpu_seconds(server.process.pid)
        assert server.url.startswith("http://127.0.0.1:")
    assert cpu < CPU_BOUND, f"{cpu:.2f} CPU seconds before listening"
    assert wall < WALL_BOUND, f"{wall:.1f} s before listening"
