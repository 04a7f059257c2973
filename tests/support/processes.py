"""Start Tether servers as real child processes and learn their URLs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from gateway.serving import READY_PREFIX

START_TIMEOUT = 30.0


@dataclass
class ServerProcess:
    """A running child server; ``output`` collects its stdout and stderr lines."""

    process: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _pump(process: subprocess.Popen[str], output: list[str], ready: threading.Event, url: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        output.append(line.rstrip("\n"))
        if not ready.is_set() and line.startswith(READY_PREFIX):
            url.append(line[len(READY_PREFIX) :].strip())
            ready.set()
    ready.set()


def start_server(
    args: Sequence[str], env: dict[str, str] | None = None, module: str = "gateway.cli"
) -> ServerProcess:
    """Run ``python -m MODULE ARGS`` (the ``tether`` CLI by default) and wait for its ready line."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
    )
    output: list[str] = []
    ready = threading.Event()
    url: list[str] = []
    threading.Thread(target=_pump, args=(process, output, ready, url), daemon=True).start()
    if not ready.wait(START_TIMEOUT) or not url:
        process.kill()
        process.wait()
        raise RuntimeError("server did not start:\n" + "\n".join(output))
    return ServerProcess(process=process, url=url[0], output=output)


@contextmanager
def running_server(
    args: Sequence[str], env: dict[str, str] | None = None, module: str = "gateway.cli"
) -> Iterator[ServerProcess]:
    server = start_server(args, env, module)
    try:
        yield server
    finally:
        server.stop()
