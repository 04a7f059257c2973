"""The official TypeScript SDK (``@anthropic-ai/sdk``, pinned in ``tests/ts_client``), installed
once per machine from the npm registry, and a way to run a script of ``tests/ts_client`` with it.

``npm ci`` installs exactly the lock file's versions into a cache directory named after the lock
file's hash (nothing is written into the checkout); a file lock makes parallel test workers
install it once. Node.js and npm come from Debian's packages (``provision.NODE``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parents[1] / "ts_client"
INSTALL_TIMEOUT = 600.0


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    root = Path(base)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        root = Path(tempfile.gettempdir())
    return root / "tether-tests"


def installed() -> Path:
    """A directory holding ``node_modules`` with the pinned SDK; installs it the first time."""
    lock = (SOURCE / "package-lock.json").read_bytes()
    target = _cache_root() / f"ts-client-{hashlib.sha256(lock).hexdigest()[:16]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "ts-client.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (target / "node_modules" / "@anthropic-ai" / "sdk" / "package.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            for name in ("package.json", "package-lock.json"):
                shutil.copy(SOURCE / name, target / name)
            done = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                cwd=target,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
            )
            if done.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                raise RuntimeError(f"npm ci of the TypeScript SDK failed:\n{done.stdout}\n{done.stderr}")
    return target


def run_script(name: str, env: dict[str, str], timeout: float = 120.0) -> dict[str, Any]:
    """Run ``tests/ts_client/<name>`` with Node.js beside the installed SDK; its last stdout line
    is JSON. ES modules resolve imports from the script's own folder, so it is copied there."""
    home = installed()
    script = home / name
    shutil.copy(SOURCE / name, script)
    done = subprocess.run(
        ["node", str(script)],
        cwd=home,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise AssertionError(f"node {name} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])
