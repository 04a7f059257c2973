"""Start Tether servers as real child processes and learn their URLs.

A ``tether sandbox`` serving HTTP needs a bearer token (``sandbox_server.auth``):
``start_sandbox``/``running_sandbox`` generate one per start and keep the headers that carry it
on ``ServerProcess.headers``; ``sandbox_client`` opens an MCP client that sends them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from gateway.serving import READY_PREFIX
from sandbox_server.auth import TOKEN_ENV, bearer_headers, new_token

START_TIMEOUT = 30.0


@dataclass
class ServerProcess:
    """A running child server; ``output`` collects its stdout and stderr lines."""

    process: subprocess.Popen[str]
    url: str
    output: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    """What a client must send (a sandbox's bearer token); empty for servers that need nothing."""

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    def view(self, path: Path) -> Path:
        """``path`` as this process sees it: a root gateway or worker mounts its sandboxes'
        workspaces in a mount namespace of its own (``sandbox_server.workspace_fs``)."""
        return Path(f"/proc/{self.process.pid}/root{path.resolve()}")

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
    args: Sequence[str],
    env: dict[str, str] | None = None,
    module: str = "gateway.cli",
    prefix: Sequence[str] = (),
) -> ServerProcess:
    """Run ``python -m MODULE ARGS`` (the ``tether`` CLI by default) and wait for its ready line.
    ``prefix`` runs it through a wrapper that execs it (``unshare ...``), so the pid stays its."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", module, *args],
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


def start_sandbox(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    module: str = "gateway.cli",
    prefix: Sequence[str] = (),
) -> ServerProcess:
    """``start_server`` for a sandbox served over HTTP: a fresh token in its environment (never
    argv), the headers that carry it on ``headers``. ``args`` include the ``sandbox`` command
    when ``module`` is the ``tether`` CLI."""
    token = new_token()
    server = start_server(args, {**(env or {}), TOKEN_ENV: token}, module, prefix)
    server.headers = bearer_headers(token)
    return server


@contextmanager
def running_sandbox(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    module: str = "gateway.cli",
    prefix: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    server = start_sandbox(args, env, module, prefix)
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def sandbox_client(url: str, headers: Mapping[str, str]) -> AsyncIterator[Client]:
    """An MCP client for ``url`` that sends ``headers`` (a sandbox's token) with every request,
    with the MCP SDK's default timeouts (a long read timeout: commands may run for a while)."""
    async with (
        httpx2.AsyncClient(headers=dict(headers), timeout=httpx2.Timeout(30.0, read=300.0)) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def listening_ports(pid: int) -> list[int]:
    """The TCP ports ``pid`` listens on (IPv4, from ``/proc``): how a test finds a sandbox that
    something else started on port 0."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = []
    for row in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # TCP_LISTEN
            ports.append(int(local.rsplit(":", 1)[1], 16))
    return sorted(ports)
