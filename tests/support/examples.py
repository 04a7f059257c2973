"""Run the files under ``examples/`` as a user would: subprocesses of the project's Python.

Each example reads ``TETHER_URL`` and ``TETHER_API_KEY``; ``TETHER_SCRIPTED_MODEL_URL`` points
its ``teach`` call at the suite's scripted model server, so the example itself loads the turns
its docstring describes. ``ExampleProcess`` is for the long-running ones (the webhook
receiver): its output is collected by a thread and waited on by condition, never by time.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SESSION_LINE = re.compile(r"^session (sesn_\w+)$", re.MULTILINE)


def example_env(gateway_url: str, api_key: str, model_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return {
        **env,
        "PYTHONUNBUFFERED": "1",
        "TETHER_URL": gateway_url,
        "TETHER_API_KEY": api_key,
        "TETHER_SCRIPTED_MODEL_URL": model_url,
        **extra,
    }


def run_example(path: str, args: Sequence[str], env: dict[str, str], timeout: float = 90) -> str:
    """Run ``examples/PATH ARGS`` to the end; its stdout, or an assertion error with all output."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / path), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=EXAMPLES.parent,
    )
    assert done.returncode == 0, f"{path} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def session_of(output: str) -> str:
    """The session id an example prints last (``session sesn_...``)."""
    found = SESSION_LINE.findall(output)
    assert found, output
    return str(found[-1])


@dataclass
class ExampleProcess:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    def wait_for(self, check: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        """The first output line for which ``check`` holds, polled until the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None
            if exited and self.pump is not None:
                self.pump.join(timeout=5)  # every line it printed is collected
            found = next((line for line in list(self.lines) if check(line)), None)
            if found is not None:
                return found
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"no line with {what}; output:\n" + "\n".join(self.lines))
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_example(path: str, args: Sequence[str], env: dict[str, str]) -> ExampleProcess:
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=EXAMPLES.parent,
    )
    started = ExampleProcess(process)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            started.lines.append(line.rstrip("\n"))

    started.pump = threading.Thread(target=pump, daemon=True)
    started.pump.start()
    return started
