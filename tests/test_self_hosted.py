"""Self-hosted environments: the tunnel agent is also the environment's worker.

Real processes throughout: the ``tether gateway``, a ``tether tunnel`` agent in worker mode
(``--environment``), and the sandbox processes the agent starts on-prem. A session's agent
toolset runs in the agent's sandbox, reached back through the tunnel; its files land in the
agent's workspace, never the gateway's.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest

from gateway import ids
from gateway.resources import work as work_queue
from gateway.store import open_store
from gateway.store.base import Store
from gateway.tools.sandbox import SandboxStartFailed
from gateway.tools.sandbox_plan import SelfHostedSandboxes
from sandbox_server import workspace_fs
from tests.conftest import Scripts, gateway_data_dir
from tests.support.processes import ServerProcess, listening_ports
from tests.support.self_hosted import agent_metric, eventually, sandbox_pids, start_worker_agent
from tests.support.sessions import send_and_stream, user_message
from tunnel_agent import worker_cli
from tunnel_agent.cli import add_arguments
from tunnel_agent.routes import DynamicRoutes
from tunnel_agent.work_contract import SANDBOX_ERROR, SANDBOX_URL, WORKER_ID, route_name


@dataclass
class OnPrem:
    """A self-hosted environment, its tunnel, and the worker agent serving both."""

    environment: Any
    tunnel: Any
    agent: ServerProcess
    agent_id: str
    workspaces: Path


@pytest.fixture(scope="module")
def onprem(
    gateway: ServerProcess, api_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OnPrem]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0) as client:
        environment = client.beta.environments.create(name="on-prem", config={"type": "self_hosted"})
        tunnel = client.beta.tunnels.create(display_name="site-a")
        token = client.beta.tunnels.reveal_token(tunnel.id).tunnel_token
    workspaces = tmp_path_factory.mktemp("onprem-workspaces")
    agent = start_worker_agent(
        gateway.url, token, api_key, environment.id, workspaces, "site-a-1", tunnel_id=tunnel.id
    )
    try:
        yield OnPrem(environment, tunnel, agent, "site-a-1", workspaces)
    finally:
        agent.stop()


def _toolset_agent(client: anthropic.Anthropic, marker: str) -> Any:
    return client.beta.agents.create(
        name="on-prem-editor",
        model="claude-sonnet-4-6",
        system=marker,
        tools=[{"type": "agent_toolset_20260401"}],
    )


def _write(path: str, content: str) -> dict[str, Any]:
    return {"type": "tool_use", "name": "write", "input": {"file_path": path, "content": content}}


def _read(path: str) -> dict[str, Any]:
    return {"type": "tool_use", "name": "read", "input": {"file_path": path}}


def _work_item(client: anthropic.Anthropic, environment_id: str, session_id: str) -> Any:
    return next(w for w in client.beta.environments.work.list(environment_id) if w.data.id == session_id)


def test_the_agent_toolset_runs_in_the_worker_agents_sandbox_on_prem(
    client: anthropic.Anthropic, scripts: Scripts, gateway: ServerProcess, onprem: OnPrem
) -> None:
    marker = scripts.add(
        [
            {"content": [_write("/workspace/notes/site.txt", "written on-prem")]},
            {"content": [_read("notes/site.txt")]},
            {"content": [{"type": "text", "text": "read back: {{last_tool_result}}"}]},
        ]
    )
    session = client.beta.sessions.create(
        agent=_toolset_agent(client, marker).id, environment_id=onprem.environment.id
    )

    streamed = send_and_stream(client, session.id, [user_message("keep a note on-prem")])

    results = [e for e in streamed if e.type == "agent.tool_result"]
    assert [bool(r.is_error) for r in results] == [False, False], [r.content for r in results]
    assert "written on-prem" in results[1].content[0].text
    # The file is in the agent's workspace; the gateway never had one for this session.
    on_prem = onprem.agent.view(onprem.workspaces / session.id)
    assert (on_prem / "notes" / "site.txt").read_text() == "written on-prem"
    assert not (gateway_data_dir(gateway) / "workspaces" / session.id).exists()

    item = _work_item(client, onprem.environment.id, session.id)
    assert item.state == "active" and item.acknowledged_at and item.started_at
    assert item.metadata[WORKER_ID] == onprem.agent_id
    url = item.metadata[SANDBOX_URL]
    assert url.startswith("http://sbx-") and url.endswith(f".{onprem.tunnel.domain}/mcp")
    # The lease keeps being renewed: a later heartbeat replaces the one seen above.
    first = item.latest_heartbeat_at
    eventually(
        lambda: _work_item(client, onprem.environment.id, session.id).latest_heartbeat_at != first,
        "another heartbeat",
    )
    pid = sandbox_pids(onprem.workspaces)[session.id]

    client.beta.sessions.delete(session.id)

    eventually(
        lambda: _work_item(client, onprem.environment.id, session.id).state == "stopped",
        "the worker to confirm the stop",
    )
    eventually(lambda: not os.path.exists(f"/proc/{pid}"), "the on-prem sandbox to exit")
    assert session.id not in sandbox_pids(onprem.workspaces)
    # The on-prem files stay with the site that owns them (as root, in the workspace's filesystem
    # image, which the worker unmounted with the stopped sandbox: look inside).
    workspace = onprem.workspaces / session.id
    mounted = workspace_fs.attach_existing(workspace)
    try:
        assert (workspace / "notes" / "site.txt").exists()
    finally:
        if mounted:
            workspace_fs.detach(workspace)


def test_a_crashed_onprem_sandbox_is_restarted_and_keeps_its_workspace(
    client: anthropic.Anthropic, scripts: Scripts, onprem: OnPrem
) -> None:
    marker = scripts.add(
        [
            {"content": [_write("kept.txt", "survives a crash")]},
            {"content": [{"type": "text", "text": "written"}]},
            {"content": [_read("kept.txt")]},
            {"content": [{"type": "text", "text": "read: {{last_tool_result}}"}]},
        ]
    )
    session = client.beta.sessions.create(
        agent=_toolset_agent(client, marker).id, environment_id=onprem.environment.id
    )
    send_and_stream(client, session.id, [user_message("write")])
    crashed = sandbox_pids(onprem.workspaces)[session.id]
    restarts = 'tether_worker_sandbox_starts_total{outcome="restarted"}'
    before = agent_metric(onprem.agent, restarts)
    os.kill(crashed, signal.SIGKILL)

    # The next heartbeat notices, restarts the sandbox and routes to it (then counts it).
    eventually(lambda: agent_metric(onprem.agent, restarts) == before + 1, "the sandbox to be restarted")
    restarted = sandbox_pids(onprem.workspaces)[session.id]
    assert restarted != crashed
    streamed = send_and_stream(client, session.id, [user_message("read")])

    [result] = [e for e in streamed if e.type == "agent.tool_result"]
    assert not result.is_error and "survives a crash" in result.content[0].text
    assert sandbox_pids(onprem.workspaces)[session.id] == restarted
    client.beta.sessions.archive(session.id)
    eventually(lambda: session.id not in sandbox_pids(onprem.workspaces), "the archived session's sandbox")


def test_a_worker_that_loses_its_lease_stops_its_sandbox_and_leaves_the_work(
    client: anthropic.Anthropic, scripts: Scripts, onprem: OnPrem
) -> None:
    marker = scripts.add([{"content": [_write("x.txt", "x")]}, {"content": []}])
    session = client.beta.sessions.create(
        agent=_toolset_agent(client, marker).id, environment_id=onprem.environment.id
    )
    send_and_stream(client, session.id, [user_message("go")])
    pid = sandbox_pids(onprem.workspaces)[session.id]
    work = client.beta.environments.work

    def steal() -> bool:
        item = _work_item(client, onprem.environment.id, session.id)
        try:
            work.heartbeat(
                item.id,
                environment_id=onprem.environment.id,
                expected_last_heartbeat=item.latest_heartbeat_at,
                desired_ttl_seconds=3600,
            )
        except anthropic.PreconditionFailedError:
            return False  # the agent heartbeated in between: read the new value and try again
        return True

    eventually(steal, "a heartbeat that takes the lease over")

    eventually(lambda: not os.path.exists(f"/proc/{pid}"), "the agent to stop the sandbox it no longer owns")
    item = _work_item(client, onprem.environment.id, session.id)
    assert item.state == "active"  # the agent left the item to its new holder
    assert any("lease lost" in line for line in onprem.agent.output)
    work.stop(item.id, environment_id=onprem.environment.id, force=True)


def test_an_onprem_sandbox_opens_only_to_its_route_holds_no_agent_secret_and_dies_with_the_agent(
    client: anthropic.Anthropic, scripts: Scripts, gateway: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    """The worker gives each sandbox a token of its own that only the sandbox's route adds (so
    tool calls through the tunnel work and nothing else on the host gets in), starts it with
    none of the agent's secrets, and the sandbox dies when the agent is killed with SIGKILL."""
    environment = client.beta.environments.create(name="on-prem-3", config={"type": "self_hosted"})
    tunnel = client.beta.tunnels.create(display_name="site-c")
    token = client.beta.tunnels.reveal_token(tunnel.id).tunnel_token
    marker = scripts.add([{"content": [_write("x.txt", "through the route")]}, {"content": []}])
    session = client.beta.sessions.create(
        agent=_toolset_agent(client, marker).id, environment_id=environment.id
    )
    workspaces = tmp_path / "workspaces"
    agent = start_worker_agent(
        gateway.url, token, api_key, environment.id, workspaces, "site-c-1", tunnel_domain=tunnel.domain
    )
    try:
        streamed = send_and_stream(client, session.id, [user_message("write")])
        [result] = [e for e in streamed if e.type == "agent.tool_result"]
        assert not result.is_error, result.content
        pid = sandbox_pids(workspaces)[session.id]

        environ = Path(f"/proc/{pid}/environ").read_bytes()
        names = {entry.partition(b"=")[0] for entry in environ.split(b"\0") if entry}
        assert b"TETHER_TUNNEL_TOKEN" not in names and b"TETHER_API_KEY" not in names
        assert token.encode() not in environ and api_key.encode() not in environ
        [port] = listening_ports(pid)
        forged = {"Authorization": "Bearer " + secrets.token_urlsafe(32)}
        for headers in ({}, forged):
            refused = httpx2.post(f"http://127.0.0.1:{port}/mcp", json={}, headers=headers, timeout=10)
            assert refused.status_code == 401

        os.kill(agent.process.pid, signal.SIGKILL)
        agent.process.wait()
        eventually(lambda: session.id not in sandbox_pids(workspaces), "the sandbox to die with its agent")
    finally:
        agent.stop()
        client.beta.sessions.delete(session.id)


def test_a_restarted_agent_reclaims_its_sessions_and_their_workspaces(
    client: anthropic.Anthropic, scripts: Scripts, gateway: ServerProcess, api_key: str, tmp_path: Path
) -> None:
    """An agent that shuts down stops its sandboxes but leaves the work: once the lease lapses
    the next worker (here a replacement agent on the same host) reclaims it from scratch."""
    environment = client.beta.environments.create(name="on-prem-2", config={"type": "self_hosted"})
    tunnel = client.beta.tunnels.create(display_name="site-b")
    token = client.beta.tunnels.reveal_token(tunnel.id).tunnel_token
    marker = scripts.add(
        [
            {"content": [_write("ledger.txt", "before the restart")]},
            {"content": [{"type": "text", "text": "written"}]},
            {"content": [_read("ledger.txt")]},
            {"content": [{"type": "text", "text": "read: {{last_tool_result}}"}]},
        ]
    )
    session = client.beta.sessions.create(
        agent=_toolset_agent(client, marker).id, environment_id=environment.id
    )
    workspaces = tmp_path / "workspaces"

    def start(agent_id: str) -> ServerProcess:
        return start_worker_agent(
            gateway.url,
            token,
            api_key,
            environment.id,
            workspaces,
            agent_id,
            tunnel_domain=tunnel.domain,
            lease_ttl=2,
        )

    first = start("site-b-1")
    try:
        send_and_stream(client, session.id, [user_message("write")])
        pid = sandbox_pids(workspaces)[session.id]
    finally:
        first.stop()
    assert not os.path.exists(f"/proc/{pid}")
    # Left to lapse, not stopped: the session is still waiting for a worker.
    assert _work_item(client, environment.id, session.id).state not in ("stopping", "stopped")

    second = start("site-b-2")
    try:
        eventually(
            lambda: (
                _work_item(client, environment.id, session.id).metadata.get(WORKER_ID) == "site-b-2"
                and session.id in sandbox_pids(workspaces)
            ),
            "the replacement agent to reclaim the session",
        )
        streamed = send_and_stream(client, session.id, [user_message("read")])
        [result] = [e for e in streamed if e.type == "agent.tool_result"]
        assert not result.is_error and "before the restart" in result.content[0].text
        client.beta.sessions.delete(session.id)
        eventually(lambda: session.id not in sandbox_pids(workspaces), "the sandbox to stop")
    finally:
        second.stop()


async def _self_hosted_store(tmp_path: Path) -> Store:
    store = await open_store(f"sqlite://{tmp_path}/store.db")
    moment = ids.timestamp()
    for env_id, kind in (("env_1", "self_hosted"), ("env_2", "cloud")):
        await store.insert("environment", {"id": env_id, "config": {"type": kind}, "created_at": moment})
    for session_id, env_id in (("sesn_1", "env_1"), ("sesn_2", "env_2")):
        await store.insert("session", {"id": session_id, "environment_id": env_id, "created_at": moment})
    return store


@pytest.mark.anyio
async def test_the_gateway_waits_for_a_worker_then_fails_the_call_with_a_clear_error(tmp_path: Path) -> None:
    """The gateway's side alone, in process: nobody ever picks the item up."""
    store = await _self_hosted_store(tmp_path)
    try:
        await work_queue.enqueue(store, "env_1", "sesn_1")
        locate = SelfHostedSandboxes(store, "tunnels.tether.internal", wait_seconds=0.3)
        assert await locate("sesn_2") is None  # a cloud session: the local pool starts its sandbox
        with pytest.raises(SandboxStartFailed, match="no self-hosted worker has picked up this session yet"):
            await locate("sesn_1")
    finally:
        await store.close()


@pytest.mark.anyio
async def test_the_gateway_uses_only_tunnel_urls_from_a_held_active_item(tmp_path: Path) -> None:
    store = await _self_hosted_store(tmp_path)
    try:
        item = await work_queue.enqueue(store, "env_1", "sesn_1")
        locate = SelfHostedSandboxes(store, "tunnels.tether.internal", wait_seconds=5)
        claimed = await work_queue.poll(store, "env_1", None, None, "w1")
        assert claimed is not None
        await work_queue.ack(store, "env_1", item["id"])
        url = "http://sbx-a.k3x9.tunnels.tether.internal/mcp"

        async def activate() -> None:
            await work_queue.update_metadata(store, "env_1", item["id"], {SANDBOX_URL: url})
            await work_queue.heartbeat(store, "env_1", item["id"], "NO_HEARTBEAT", None)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(activate)  # while the call below waits: the change wakes it
            assert await locate("sesn_1") == url

        await work_queue.update_metadata(store, "env_1", item["id"], {SANDBOX_URL: "http://10.0.0.5/mcp"})
        with pytest.raises(SandboxStartFailed, match="not a tunnel URL"):
            await locate("sesn_1")
        await work_queue.update_metadata(
            store, "env_1", item["id"], {SANDBOX_URL: None, SANDBOX_ERROR: "bwrap is missing"}
        )
        with pytest.raises(SandboxStartFailed, match="could not start the sandbox: bwrap is missing"):
            await locate("sesn_1")
        await work_queue.stop_for_session(store, "sesn_1")
        with pytest.raises(SandboxStartFailed, match="was stopped"):
            await locate("sesn_1")
        assert (await work_queue.get(store, "env_1", item["id"]))["state"] == "stopping"
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_reclaimed_item_starts_over_and_a_lapsed_one_stops_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue rules the worker relies on: the next worker claims a lapsed lease with
    NO_HEARTBEAT (the old worker is fenced out), and stopping an item nobody holds is final."""
    store = await _self_hosted_store(tmp_path)
    clock = [1000.0]
    monkeypatch.setattr(work_queue, "_now", lambda: clock[0])
    try:
        item = await work_queue.enqueue(store, "env_1", "sesn_1")
        await work_queue.poll(store, "env_1", None, None, "old")
        await work_queue.ack(store, "env_1", item["id"])
        lease = await work_queue.heartbeat(store, "env_1", item["id"], "NO_HEARTBEAT", 10)
        clock[0] += 11  # the old worker went silent
        assert not work_queue.held(await work_queue.get(store, "env_1", item["id"]))

        assert (await work_queue.poll(store, "env_1", None, None, "new")) is not None
        await work_queue.ack(store, "env_1", item["id"])
        with pytest.raises(work_queue.HeartbeatPreconditionFailed):
            await work_queue.heartbeat(store, "env_1", item["id"], lease["last_heartbeat"], 10)
        assert (await work_queue.heartbeat(store, "env_1", item["id"], "NO_HEARTBEAT", 10))["lease_extended"]

        clock[0] += 11  # the new worker went silent too
        await work_queue.stop_for_session(store, "sesn_1")
        assert (await work_queue.get(store, "env_1", item["id"]))["state"] == "stopped"
    finally:
        await store.close()


def test_sandbox_routes_are_dns_labels_unique_per_id_and_loopback_only() -> None:
    a, b = route_name("work_AbC123"), route_name("work_aBc123")
    assert a != b and a.startswith("sbx-work-abc123-") and len(a) <= 63
    assert len(route_name("work_" + "x" * 200)) <= 63

    routes = DynamicRoutes(reserved={"crm"})
    routes.set_loopback(a, 4100, {"Authorization": "Bearer first"})
    found = routes.get(a)
    assert found is not None and (found.route.host, found.route.port) == ("127.0.0.1", 4100)
    assert found.route.headers == {"authorization": "Bearer first"}  # lower-case: it replaces the gateway's
    assert "first" not in repr(found)
    assert found.allow.permits("127.0.0.1", 4100)
    assert not found.allow.permits("127.0.0.1", 4101) and not found.allow.permits("10.0.0.5", 4100)
    routes.set_loopback(a, 4200, {"Authorization": "Bearer second"})  # a restart: new port, new token
    assert routes.get(a).allow.permits("127.0.0.1", 4200)  # type: ignore[union-attr]
    assert routes.get(a).route.headers == {"authorization": "Bearer second"}  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="line break"):
        routes.set_loopback(a, 4200, {"Authorization": "Bearer x\r\nX-Injected: 1"})
    with pytest.raises(ValueError, match="shadow"):
        routes.set_loopback("crm", 4300)
    routes.remove(a)
    assert routes.get(a) is None and routes.names() == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--gateway", "http://g"], "--config is required"),
        (["--gateway", "http://g", "--environment", "env_1"], "needs --tunnel-domain or --tunnel-id"),
        (
            "--gateway http://g --environment env_1 --tunnel-domain d --lease-ttl 10 --heartbeat-interval 10".split(),
            "shorter than --lease-ttl",
        ),
    ],
)
def test_worker_flags_are_checked_before_anything_starts(
    argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_API_KEY", "k")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(SystemExit, match=message):
        worker_cli.check_arguments(parser.parse_args(argv))


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("admin", "refusing to run with an admin API key"),
        ("developer", "role (developer) cannot serve an environment"),
        ("tk1.apikey_unknown.secret", "the gateway refused this API key"),
    ],
)
def test_the_tunnel_agent_refuses_an_admin_key_and_an_unknown_one_in_one_line(
    gateway: ServerProcess, api_key: str, client: anthropic.Anthropic, key: str, message: str, tmp_path: Path
) -> None:
    onprem = client.beta.environments.create(name="strict site", config={"type": "self_hosted"})
    if key == "developer":
        created = httpx2.post(
            gateway.url + "/v1/organizations/api_keys",
            headers={"x-api-key": api_key},
            json={"name": "not a worker", "role": "developer"},
            timeout=30,
        )
        key = created.json()["key"]
    env = {**os.environ, "TETHER_API_KEY": api_key if key == "admin" else key, "TETHER_TUNNEL_TOKEN": "t"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunnel_agent",
            "--gateway",
            gateway.url,
            "--environment",
            onprem.id,
            "--tunnel-domain",
            "site.tunnel.test",
            "--workspaces",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    if "unknown" not in key:
        assert "tether keys create --name SITE --role worker" in lines[0]


def test_an_onprem_sandbox_gets_the_sessions_files_through_the_tunnel(
    client: anthropic.Anthropic, scripts: Scripts, gateway: ServerProcess, onprem: OnPrem
) -> None:
    upload = client.beta.files.upload(file=("brief.md", b"# the brief\n", "text/markdown"))
    marker = scripts.add(
        [
            {"content": [_read(f"/mnt/session/uploads/{upload.id}")]},
            {"content": [{"type": "text", "text": "read"}]},
        ]
    )
    session = client.beta.sessions.create(
        agent=_toolset_agent(client, marker).id,
        environment_id=onprem.environment.id,
        resources=[
            {"type": "file", "file_id": upload.id},
            {"type": "file", "file_id": upload.id, "mount_path": "/workspace/brief.md"},
        ],
    )
    streamed = send_and_stream(client, session.id, [user_message("read the brief")])
    results = [e for e in streamed if e.type == "agent.tool_result"]
    assert [(r.is_error, r.content[0].text) for r in results] == [(False, "     1\t# the brief\n")]
    assert not [e for e in streamed if e.type == "session.error"]
    on_prem = onprem.agent.view(onprem.workspaces / session.id)
    assert (on_prem / "brief.md").read_bytes() == b"# the brief\n"
    assert not (gateway_data_dir(gateway) / "workspaces" / session.id).exists()
