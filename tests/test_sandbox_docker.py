"""The Docker backend without an engine: the configuration it builds, its session semantics against a
fake client passed to the constructor, and backend selection."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp.types import CallToolResult, TextContent

from sandbox_server.backends import BackendUnavailable, make_bash_backend
from sandbox_server.bwrap import BubblewrapBash
from sandbox_server.docker_backend import (
    CWD_REPORT,
    DockerBash,
    DockerSettings,
    cleanup_config,
    container_config,
    exec_config,
)
from sandbox_server.limits import MiB, SandboxLimits
from sandbox_server.shell import SHELL_SCRIPT

LIMITS = SandboxLimits(timeout=5, memory=256 * MiB, pids=64, disk_quota=32 * MiB, tmp_size=16 * MiB)
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


# --------------------------------------------------------------------------- a fake engine


@dataclass
class FakeContainer:
    id: str
    removed: bool = False

    def remove(self, force: bool = False) -> None:
        self.removed = force


@dataclass
class FakeContainers:
    runs: list[dict[str, Any]] = field(default_factory=list)
    created: dict[str, FakeContainer] = field(default_factory=dict)

    def run(self, **kwargs: Any) -> FakeContainer:
        self.runs.append(kwargs)
        container = FakeContainer(f"c{len(self.runs)}")
        self.created[container.id] = container
        return container

    def get(self, container_id: str) -> FakeContainer:
        return self.created[container_id]


@dataclass
class Script:
    """What the fake does for one command exec: output chunks, an exit code, the cwd it reports."""

    chunks: list[bytes]
    exit_code: int = 0
    cwd: str | None = None
    hang: bool = False


class FakeApi:
    """Mimics ``client.api``: command execs stream ``Script`` output; cleanup execs print the cwd file."""

    def __init__(self, scripts: list[Script]) -> None:
        self.scripts = scripts
        self.creates: list[tuple[str, dict[str, Any]]] = []
        self._by_id: dict[str, Script] = {}
        self._report: bytes = b""
        self.killed = threading.Event()

    def exec_create(self, container: str, **kwargs: Any) -> dict[str, str]:
        self.creates.append((container, kwargs))
        exec_id = f"e{len(self.creates)}"
        if kwargs["cmd"][0] == "bash":
            self._by_id[exec_id] = self.scripts.pop(0)
        return {"Id": exec_id}

    def exec_start(self, exec_id: str, stream: bool = False, demux: bool = False) -> Any:
        if exec_id not in self._by_id:  # the cleanup exec
            self.killed.set()
            report, self._report = self._report, b""
            return report
        script = self._by_id[exec_id]

        def frames() -> Iterator[bytes]:
            yield from script.chunks
            if script.hang:
                self.killed.wait(10)
                return
            if script.cwd is not None:
                self._report = script.cwd.encode() + b"\n"

        return frames()

    def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        script = self._by_id[exec_id]
        return {"ExitCode": None if script.hang else script.exit_code}


class FakeClient:
    def __init__(self, scripts: list[Script] | None = None, *, reachable: bool = True) -> None:
        self.containers = FakeContainers()
        self.api = FakeApi(scripts or [])
        self.reachable = reachable

    def ping(self) -> bool:
        if not self.reachable:
            raise ConnectionError("Cannot connect to the Docker daemon")
        return True


# --------------------------------------------------------------------------- configuration


def test_container_configuration(tmp_path: Path) -> None:
    config = container_config(tmp_path, LIMITS, DockerSettings(image="example/tools:1"))
    assert config["image"] == "example/tools:1"
    assert config["network_mode"] == "none"
    assert config["read_only"] is True
    assert config["cap_drop"] == ["ALL"]
    assert config["security_opt"] == ["no-new-privileges"]
    assert config["user"] == "1000:1000"
    assert config["mem_limit"] == 256 * MiB
    assert config["memswap_limit"] == 256 * MiB
    assert config["pids_limit"] == 64
    assert config["volumes"] == {str(tmp_path): {"bind": "/workspace", "mode": "rw"}}
    assert config["working_dir"] == "/workspace"
    assert config["tmpfs"] == {"/tmp": f"rw,nosuid,nodev,size={16 * MiB},mode=1777"}
    assert config["init"] is True
    limits = {u["Name"]: (u["Soft"], u["Hard"]) for u in config["ulimits"]}
    assert limits == {"fsize": (32 * MiB, 32 * MiB), "core": (0, 0)}
    assert "privileged" not in config
    assert config["environment"]["HOME"] == "/workspace"


def test_exec_configuration_passes_the_command_as_data() -> None:
    config = exec_config("/workspace/sub", "echo 'a b' $HOME", DockerSettings(user="2000:2000"))
    assert config["cmd"] == [
        "bash",
        "-c",
        SHELL_SCRIPT,
        "bash",
        "/workspace/sub",
        "echo 'a b' $HOME",
        CWD_REPORT,
    ]
    assert config["user"] == "2000:2000"
    assert config["tty"] is False
    cleanup = cleanup_config(DockerSettings())
    assert cleanup["cmd"][:2] == ["sh", "-c"]
    assert "kill -KILL -1" in cleanup["cmd"][2]


# --------------------------------------------------------------------------- semantics against the fake


@pytest.mark.anyio
async def test_commands_cwd_and_exit_codes_through_the_fake(tmp_path: Path) -> None:
    client = FakeClient(
        [
            Script([b"hello ", b"world\n"], cwd="/workspace/sub"),
            Script([b"oops\n"], exit_code=3, cwd="/workspace/sub"),
            Script([], exit_code=1),  # ``exit 1``: nothing reported, cwd kept
        ]
    )
    backend = DockerBash(tmp_path / "ws", LIMITS, client=client)
    first = await backend.run("echo hello world; cd sub", False, None)
    assert _text(first) == "hello world\n"
    assert backend.cwd == "/workspace/sub"
    second = await backend.run("echo oops >&2; false", False, None)
    assert not second.is_error
    assert _text(second) == "oops\n[exit code 3]"
    third = await backend.run("exit 1", False, None)
    assert _text(third) == "[exit code 1]"
    assert backend.cwd == "/workspace/sub"

    assert len(client.containers.runs) == 1, "one container per session"
    command_execs = [kwargs for _, kwargs in client.api.creates if kwargs["cmd"][0] == "bash"]
    assert [e["cmd"][4] for e in command_execs] == ["/workspace", "/workspace/sub", "/workspace/sub"]
    cleanups = [kwargs for _, kwargs in client.api.creates if kwargs["cmd"][0] == "sh"]
    assert len(cleanups) == 3, "every command is followed by the kill-leftovers cleanup"

    backend.close()
    assert client.containers.created["c1"].removed


@pytest.mark.anyio
async def test_timeout_kills_through_the_cleanup_exec(tmp_path: Path) -> None:
    client = FakeClient([Script([b"partial\n"], hang=True)])
    backend = DockerBash(tmp_path / "ws", LIMITS, client=client)
    result = await backend.run("sleep 100", False, 300)
    assert result.is_error
    assert _text(result) == (
        "partial\n[error: Command timed out after 0.3 s; it and every process it started were killed.]"
    )
    assert client.api.killed.is_set()


# --------------------------------------------------------------------------- choosing a backend


def test_auto_falls_back_to_bubblewrap_when_ping_fails(tmp_path: Path) -> None:
    backend = make_bash_backend(
        "auto",
        tmp_path,
        LIMITS,
        docker_factory=lambda: FakeClient(reachable=False),
        bwrap="/usr/bin/bwrap",
    )
    assert isinstance(backend, BubblewrapBash)


def test_auto_and_docker_use_a_reachable_engine(tmp_path: Path) -> None:
    client = FakeClient()
    for name in ("auto", "docker"):
        backend = make_bash_backend(name, tmp_path, LIMITS, docker_factory=lambda: client)  # type: ignore[arg-type]
        assert isinstance(backend, DockerBash)
        assert backend.client is client
    assert client.containers.runs == [], "the container is created on the first command, not before"


def test_explicit_docker_without_engine_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable, match="no Docker engine is reachable"):
        make_bash_backend("docker", tmp_path, LIMITS, docker_factory=lambda: FakeClient(reachable=False))


def test_cli_reports_an_unavailable_backend(tmp_path: Path) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "sandbox", "--workspace", str(tmp_path), "--backend", "docker"],
        cwd=REPO_ROOT,
        env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert finished.returncode != 0
    assert "the docker backend is unavailable" in finished.stderr
    assert "listening on" not in finished.stdout
