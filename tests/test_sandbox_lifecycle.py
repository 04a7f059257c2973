"""The gateway's side of sandboxes: one per session on first use, replaced when it dies,
stopped when idle or when the session is deleted; outputs served through ``/v1/files``.

Also what keeps a sandbox to its gateway: only the gateway's token opens it, its environment
holds none of the gateway's secrets, and no sandbox process outlives the gateway that started
it, whether a start is cancelled, the gateway is killed with SIGKILL, or a restarted gateway
finds one left over."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import anyio
import anyio.to_thread
import httpx2
import pytest
from anthropic.types.beta import BetaFileMetadata

from gateway.tools import mcp_client
from gateway.tools.pidfiles import process_start
from gateway.tools.sandbox import Launch, SandboxPool
from sandbox_server import workspace_fs
from sandbox_server.egress import TOKEN_ENV as EGRESS_TOKEN_ENV
from sandbox_server.workspace import AREA_DIR
from tests.conftest import Scripts, gateway_data_dir, gateway_workspaces
from tests.support.processes import (
    ServerProcess,
    listening_ports,
    sandbox_client,
    start_sandbox,
    start_server,
)
from tests.support.self_hosted import eventually
from tests.support.sessions import send_and_stream, user_message


def sandbox_pids(session_id: str) -> list[int]:
    """Sandbox server processes whose workspace is this session's (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"sandbox" in cmdline and any(arg.endswith(session_id.encode()) for arg in cmdline):
            pids.append(int(entry.name))
    return pids


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _tool_agent(client: anthropic.Anthropic, marker: str) -> Any:
    return client.beta.agents.create(
        name="editor", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )


def _write(path: str, content: str) -> dict[str, Any]:
    return {"type": "tool_use", "name": "write", "input": {"file_path": path, "content": content}}


def _edit(path: str, old: str, new: str) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "name": "edit",
        "input": {"file_path": path, "old_string": old, "new_string": new},
    }


def test_multi_step_edit_produces_the_final_file_and_outputs_download_through_files_api(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    report = "/workspace/outputs/report.md"
    marker = scripts.add(
        [
            {"content": [_write("/workspace/src/app.py", "def greet():\n    return 'hello'\n")]},
            {"content": [_edit("/workspace/src/app.py", "'hello'", "'hello, world'")]},
            {"content": [_edit("src/app.py", "def greet():", "def greet() -> str:")]},
            {"content": [_edit("src/app.py", "missing text", "x")]},
            {"content": [_write(report, "# Report\nAll edits applied.\n")]},
            {"content": [{"type": "text", "text": "Done."}]},
        ]
    )
    agent = _tool_agent(client, marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    streamed = send_and_stream(client, session.id, [user_message("refactor")])

    results = [e for e in streamed if e.type == "agent.tool_result"]
    assert [bool(r.is_error) for r in results] == [False, False, False, True, False]
    assert "not found" in results[3].content[0].text.lower()
    workspace = gateway_workspaces(gateway) / session.id
    assert (workspace / "src" / "app.py").read_text() == "def greet() -> str:\n    return 'hello, world'\n"

    listed = list(client.beta.files.list(scope_id=session.id))
    assert [f.filename for f in listed] == ["report.md"]
    raw = client.beta.files.with_raw_response.list(scope_id=session.id).http_response.json()["data"][0]
    metadata = BetaFileMetadata.model_validate(raw)
    assert metadata.scope is not None and metadata.scope.id == session.id
    assert metadata.size_bytes == len("# Report\nAll edits applied.\n")
    assert "_path" not in raw
    assert client.beta.files.retrieve_metadata(metadata.id).id == metadata.id
    assert client.beta.files.download(metadata.id).read() == b"# Report\nAll edits applied.\n"
    # The id is stable across listings while the file exists.
    assert [f.id for f in client.beta.files.list(scope_id=session.id)] == [metadata.id]


def test_output_symlink_pointing_outside_is_never_listed_or_served(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess, tmp_path: Path
) -> None:
    marker = scripts.add([{"content": [_write("/workspace/outputs/ok.txt", "ok")]}, {"content": []}])
    session = client.beta.sessions.create(agent=_tool_agent(client, marker).id, environment_id=environment.id)
    send_and_stream(client, session.id, [user_message("go")])
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    outputs = gateway_workspaces(gateway) / session.id / "outputs"
    (outputs / "leak.txt").symlink_to(secret)

    names = [f.filename for f in client.beta.files.list(scope_id=session.id)]
    assert names == ["ok.txt"]


def test_a_killed_sandbox_is_replaced_on_the_next_tool_call_and_keeps_the_workspace(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any
) -> None:
    marker = scripts.add(
        [
            {"content": [_write("keep.txt", "survives")]},
            {"content": [{"type": "text", "text": "written"}]},
            {"content": [{"type": "tool_use", "name": "read", "input": {"file_path": "keep.txt"}}]},
            {"content": [{"type": "text", "text": "read: {{last_tool_result}}"}]},
        ]
    )
    session = client.beta.sessions.create(agent=_tool_agent(client, marker).id, environment_id=environment.id)
    send_and_stream(client, session.id, [user_message("write")])
    [first_pid] = sandbox_pids(session.id)
    os.kill(first_pid, signal.SIGKILL)

    streamed = send_and_stream(client, session.id, [user_message("read it back")])

    result = next(e for e in streamed if e.type == "agent.tool_result")
    assert not result.is_error and "survives" in result.content[0].text
    [second_pid] = sandbox_pids(session.id)
    assert second_pid != first_pid


def test_deleting_a_session_stops_its_sandbox_and_removes_its_workspace(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    marker = scripts.add([{"content": [_write("outputs/x.txt", "x")]}, {"content": []}])
    session = client.beta.sessions.create(agent=_tool_agent(client, marker).id, environment_id=environment.id)
    send_and_stream(client, session.id, [user_message("go")])
    [file_id] = [f.id for f in client.beta.files.list(scope_id=session.id)]
    assert sandbox_pids(session.id)

    client.beta.sessions.delete(session.id)

    assert sandbox_pids(session.id) == []
    assert not (gateway_workspaces(gateway) / session.id).exists()
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(file_id)


def _loop_backing_files() -> set[str]:
    """The files behind the host's loop devices (global, whatever mount namespace uses them)."""
    found = set()
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            found.add(backing.read_text().strip().removesuffix(" (deleted)"))
        except OSError:
            continue
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="workspace images are mounted only by a root gateway")
def test_a_deleted_workspace_leaves_no_loop_device_while_other_sandboxes_run(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, gateway: ServerProcess
) -> None:
    # Each sandbox's private namespace starts as a copy of the gateway's, other sessions'
    # workspace mounts included: they must not pin a deleted session's image.
    marker = scripts.add([{"content": [_write("a.txt", "a")]}, {"content": []}])
    first = client.beta.sessions.create(agent=_tool_agent(client, marker).id, environment_id=environment.id)
    send_and_stream(client, first.id, [user_message("go")])
    marker = scripts.add([{"content": [_write("b.txt", "b")]}, {"content": []}])
    second = client.beta.sessions.create(agent=_tool_agent(client, marker).id, environment_id=environment.id)
    send_and_stream(client, second.id, [user_message("go")])
    images = {
        sid: str((gateway_data_dir(gateway) / "workspaces" / f"{sid}.img").resolve())
        for sid in (first.id, second.id)
    }
    assert set(images.values()) <= _loop_backing_files(), "both workspaces are images on loop devices"
    assert sandbox_pids(first.id) and sandbox_pids(second.id)

    client.beta.sessions.delete(first.id)

    eventually(lambda: images[first.id] not in _loop_backing_files(), "the deleted image's loop device to go")
    assert images[second.id] in _loop_backing_files() and sandbox_pids(second.id)
    assert not Path(images[first.id]).exists()
    client.beta.sessions.delete(second.id)
    eventually(lambda: images[second.id] not in _loop_backing_files(), "the second loop device to go")


@pytest.mark.anyio
async def test_idle_sandboxes_are_stopped_and_restarted_on_demand(tmp_path: Path) -> None:
    now = [1000.0]
    pool = SandboxPool(tmp_path, idle_seconds=60, clock=lambda: now[0])
    try:
        endpoint = await pool.endpoint("sesn_idle")
        assert {t.name for t in await mcp_client.list_tools(endpoint.url, dict(endpoint.headers))} >= {
            "read",
            "write",
        }
        pid = pool.pid("sesn_idle")
        now[0] += 30
        assert await pool.reap_idle() == []
        now[0] += 31
        assert await pool.reap_idle() == ["sesn_idle"]
        assert pool.running() == []
        assert pid is not None and not process_exists(pid)
        again = await pool.endpoint("sesn_idle")
        assert again.headers != endpoint.headers, "every start has a token of its own"
        assert await mcp_client.list_tools(again.url, dict(again.headers))
        assert pool.pid("sesn_idle") != pid
    finally:
        await pool.close()


# What keeps a sandbox to its gateway -----------------------------------------------------

SECRET_NAMES = ("TETHER_API_KEYS", "TETHER_API_KEY", "TETHER_MASTER_KEY", "ANTHROPIC_API_KEY")
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@dataclass
class Gateway:
    """A gateway process of a test's own (so it can be killed), with secrets in its environment."""

    server: ServerProcess
    data_dir: Path
    secrets: dict[str, str]

    def client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.server.url, api_key=self.secrets["TETHER_API_KEYS"], max_retries=0, timeout=30
        )

    def workspace(self, session_id: str) -> Path:
        return self.data_dir / "workspaces" / session_id

    def seen_by_gateway(self, path: Path) -> Path:
        """``path`` as the gateway sees it (its workspaces may be mounted in its own namespace)."""
        return Path(f"/proc/{self.server.process.pid}/root{path}")


@pytest.fixture
def start_gateway(tmp_path: Path, model_server: ServerProcess) -> Iterator[Callable[[], Gateway]]:
    started: list[ServerProcess] = []
    data_dir = tmp_path / "data"

    def start() -> Gateway:
        api_key = "test-" + secrets.token_hex(16)
        values = {
            "TETHER_API_KEYS": api_key,
            "TETHER_API_KEY": api_key,  # the operator CLI's variable, as an operator's shell may have it
            "TETHER_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "ANTHROPIC_API_KEY": "sk-ant-test-" + secrets.token_hex(16),
        }
        env = {**values, "TETHER_MODEL_BASE_URL": model_server.url, "TETHER_MODEL_RETRY_BASE_SECONDS": "0.01"}
        server = start_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env)
        started.append(server)
        return Gateway(server, data_dir, values)

    yield start
    for server in started:
        server.stop()


def _run_a_tool_call(gateway: Gateway, scripts: Scripts, content: str = "hi") -> str:
    """A session whose turn writes ``hello.txt`` in its sandbox; its id."""
    marker = scripts.add([{"content": [_write("hello.txt", content)]}, {"content": []}])
    with gateway.client() as client:
        environment = client.beta.environments.create(name="lifecycle")
        session = client.beta.sessions.create(
            agent=_tool_agent(client, marker).id, environment_id=environment.id
        )
        streamed = send_and_stream(client, session.id, [user_message("go")])
    [result] = [e for e in streamed if e.type == "agent.tool_result"]
    assert not result.is_error, result.content
    return session.id


def processes_naming(path: Path) -> list[int]:
    """Live (not zombie) processes whose command line names ``path`` or something under it."""
    found = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and process_start(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def _environ_names(pid: int) -> dict[bytes, bytes]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.partition(b"=")[::2] for entry in entries if entry)


def _initialize(http: httpx2.Client, url: str, headers: dict[str, str]) -> httpx2.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    return http.post(url, json=body, headers={**MCP_HEADERS, **headers})


def _touch(http: httpx2.Client, url: str, name: str, headers: dict[str, str]) -> httpx2.Response:
    """A ``bash`` tools/call that would create ``/workspace/NAME``."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "bash", "arguments": {"command": f"touch /workspace/{name}"}},
    }
    return http.post(url, json=body, headers={**MCP_HEADERS, **headers})


def _wrong_credentials() -> list[dict[str, str]]:
    forged = "Bearer " + secrets.token_urlsafe(32)
    return [
        {},
        {"Authorization": forged},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dGV0aGVyOng="},
    ]


def test_a_gateway_started_sandbox_refuses_calls_without_its_token_and_runs_nothing(
    start_gateway: Callable[[], Gateway], scripts: Scripts
) -> None:
    gateway = start_gateway()
    session_id = _run_a_tool_call(gateway, scripts)
    [pid] = processes_naming(gateway.workspace(session_id))
    [port] = listening_ports(pid)
    url = f"http://127.0.0.1:{port}/mcp"
    marker = "marker-" + secrets.token_hex(4)

    with httpx2.Client(timeout=10) as http:
        for headers in _wrong_credentials():
            refused = _initialize(http, url, headers)
            assert refused.status_code == 401, (headers, refused.text)
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert _touch(http, url, marker, headers).status_code == 401
        # Not even the MCP layer's own errors leak through without the token.
        assert http.get(url).status_code == 401
        assert http.get(f"http://127.0.0.1:{port}/").status_code == 401

    workspace = gateway.seen_by_gateway(gateway.workspace(session_id))
    assert (workspace / "hello.txt").read_text() == "hi", "the workspace is looked at where it is"
    assert not (workspace / marker).exists()
    assert process_start(pid) is not None, "the sandbox still runs"


@pytest.mark.anyio
async def test_the_token_is_needed_on_every_request_not_just_the_first(tmp_path: Path) -> None:
    """An established MCP session id is no substitute for the token; the right token runs the
    very same request (so the refused ones were real attempts)."""
    pool = SandboxPool(tmp_path / "ws")
    other = SandboxPool(tmp_path / "other")
    try:
        endpoint = await pool.endpoint("sesn_token")
        foreign = await other.endpoint("sesn_token")
        token = dict(endpoint.headers)["Authorization"].split()[1]
        pid = pool.pid("sesn_token")

        def attempts() -> None:
            assert pid is not None and token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            with httpx2.Client(timeout=30) as http:
                opened = _initialize(http, endpoint.url, dict(endpoint.headers))
                assert opened.status_code == 200
                session = {"mcp-session-id": opened.headers["mcp-session-id"]}
                for headers in [*_wrong_credentials(), dict(foreign.headers)]:
                    assert _touch(http, endpoint.url, "refused", {**session, **headers}).status_code == 401
                ran = _touch(http, endpoint.url, "allowed", {**session, **endpoint.headers})
                assert ran.status_code == 200 and '"isError":false' in ran.text

        await anyio.to_thread.run_sync(attempts)
        made = sorted(os.listdir(tmp_path / "ws" / "sesn_token"))
        assert made == [AREA_DIR, "allowed"]  # the session area is the server's own, made at start
        async with sandbox_client(endpoint.url, endpoint.headers) as client:
            assert not (await client.call_tool("bash", {"command": "true"})).is_error
    finally:
        await pool.close()
        await other.close()


def test_a_gateway_started_sandbox_inherits_none_of_the_gateways_secrets(
    start_gateway: Callable[[], Gateway], scripts: Scripts
) -> None:
    gateway = start_gateway()
    session_id = _run_a_tool_call(gateway, scripts)
    [pid] = processes_naming(gateway.workspace(session_id))

    ours = _environ_names(gateway.server.process.pid)
    assert all(name.encode() in ours for name in SECRET_NAMES), "the gateway has them to leak"
    theirs = _environ_names(pid)
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    for name, value in gateway.secrets.items():
        assert name.encode() not in theirs
        assert value.encode() not in raw
    assert not [name for name in theirs if name.startswith(b"TETHER_") and name not in _ALLOWED_TETHER]
    assert b"PATH" in theirs


_ALLOWED_TETHER = {
    b"TETHER_SANDBOX_TOKEN",  # its own token (popped from the live environment at start)
    b"TETHER_SANDBOX_PARENT",  # the pid to die with (likewise)
    b"TETHER_EGRESS_TOKEN",
    b"TETHER_PRIVATE_MOUNTS",
    b"TETHER_SANDBOX_UIDS",
}


@pytest.mark.anyio
async def test_cancelling_a_start_midway_leaves_no_process(tmp_path: Path) -> None:
    """The sandbox is held mid-start (fetching its egress credentials from a server that never
    answers) when the start is cancelled: its process is killed and reaped before the
    cancellation completes, and its pid file is gone."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    credentials_url = f"http://127.0.0.1:{hung.getsockname()[1]}/credentials"

    async def plan(session_id: str) -> Launch:
        args = ["--egress", "limited", "--credentials-url", credentials_url]
        return Launch(args, {EGRESS_TOKEN_ENV: "tok_" + secrets.token_hex(8)})

    state = tmp_path / "state"
    pool = SandboxPool(tmp_path / "ws", plan=plan, state_dir=state)
    workspace = pool.workspace("sesn_cancel")
    finished: list[object] = []
    try:
        async with anyio.create_task_group() as tasks:

            async def start() -> None:
                finished.append(await pool.endpoint("sesn_cancel"))

            tasks.start_soon(start)
            with anyio.fail_after(30):
                await anyio.wait_readable(hung)  # the child connected: it is waiting for an answer
            connection, _ = hung.accept()
            [pid] = processes_naming(workspace)
            assert [p.name for p in state.iterdir()] == [f"sesn_cancel.{pid}.json"]
            tasks.cancel_scope.cancel()

        assert finished == [], "the start was still under way"
        assert not process_exists(pid), "killed and reaped before the cancellation completed"
        assert processes_naming(workspace) == []
        assert list(state.iterdir()) == []
        assert pool.running() == []
        connection.close()
    finally:
        hung.close()
        await pool.close()
        # Killed mid-start, the server could not take down a workspace image it mounted (outside
        # a gateway, nothing else would): unmount it here, as a gateway deleting the session does.
        await anyio.to_thread.run_sync(workspace_fs.remove, workspace)


def test_sandboxes_die_with_a_gateway_killed_with_sigkill(
    start_gateway: Callable[[], Gateway], scripts: Scripts
) -> None:
    gateway = start_gateway()
    session_id = _run_a_tool_call(gateway, scripts)
    workspace = gateway.workspace(session_id)
    assert processes_naming(workspace)

    os.kill(gateway.server.process.pid, signal.SIGKILL)
    gateway.server.process.wait()

    eventually(lambda: processes_naming(workspace) == [], "the sandbox to die with its gateway", timeout=10)


def test_a_restarted_gateway_stops_leftover_sandboxes_and_nothing_else(
    start_gateway: Callable[[], Gateway], tmp_path: Path
) -> None:
    """Pid files as a killed gateway leaves them: one names a sandbox that still runs (its owner
    is gone), one a pid now held by an unrelated process (a different start time), one a sandbox
    whose gateway still runs (a replica on the same data directory), one a process long gone."""
    state = tmp_path / "data" / "sandboxes"
    state.mkdir(parents=True)
    gone_owner = subprocess.Popen(["sleep", "60"])
    dead_start = process_start(gone_owner.pid)
    assert dead_start is not None
    dead: dict[str, object] = {"pid": gone_owner.pid, "start": dead_start}
    gone_owner.kill()
    gone_owner.wait()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()

    def record(name: str, pid: int, start: str | None, owner: dict[str, object]) -> Path:
        path = state / f"{name}.{pid}.json"
        document = {"session_id": name, "pid": pid, "start": start, "boot": boot, "owner": owner}
        path.write_text(json.dumps(document))
        return path

    leftover = start_sandbox(["sandbox", "--workspace", str(tmp_path / "leftover-ws"), "--port", "0"])
    unrelated = subprocess.Popen(["sleep", "60"])
    replicas = subprocess.Popen(["sleep", "60"])
    try:
        leftover_file = record(
            "sesn_leftover", leftover.process.pid, process_start(leftover.process.pid), dead
        )
        start = process_start(unrelated.pid)
        assert start is not None
        stale_file = record("sesn_recycled", unrelated.pid, str(int(start) - 1), dead)
        me: dict[str, object] = {"pid": os.getpid(), "start": process_start(os.getpid())}
        replica_file = record("sesn_replica", replicas.pid, process_start(replicas.pid), me)
        vanished_file = record("sesn_vanished", gone_owner.pid, dead_start, dead)

        start_gateway()  # ready means its start-up sweep is done

        eventually(
            lambda: leftover.process.poll() is not None, "the leftover sandbox to be stopped", timeout=15
        )
        assert leftover.process.returncode == 128 + signal.SIGTERM, "asked to stop, not killed outright"
        assert unrelated.poll() is None, "a process that reuses a recorded pid is never signalled"
        assert replicas.poll() is None, "a sandbox whose gateway still runs is left to it"
        assert not leftover_file.exists() and not stale_file.exists() and not vanished_file.exists()
        assert replica_file.exists()
    finally:
        leftover.stop()
        for process in (unrelated, replicas):
            process.kill()
            process.wait()
