"""The gateway's side of sandboxes: one per session on first use, replaced when it dies,
stopped when idle or when the session is deleted; outputs served through ``/v1/files``."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaFileMetadata

from gateway.tools import mcp_client
from gateway.tools.sandbox import SandboxPool
from tests.conftest import Scripts, gateway_data_dir
from tests.support.processes import ServerProcess
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
    workspace = gateway_data_dir(gateway) / "workspaces" / session.id
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
    outputs = gateway_data_dir(gateway) / "workspaces" / session.id / "outputs"
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
    assert not (gateway_data_dir(gateway) / "workspaces" / session.id).exists()
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(file_id)


@pytest.mark.anyio
async def test_idle_sandboxes_are_stopped_and_restarted_on_demand(tmp_path: Path) -> None:
    now = [1000.0]
    pool = SandboxPool(tmp_path, idle_seconds=60, clock=lambda: now[0])
    try:
        url = await pool.url_for("sesn_idle")
        assert {t.name for t in await mcp_client.list_tools(url)} >= {"read", "write"}
        pid = pool.pid("sesn_idle")
        now[0] += 30
        assert await pool.reap_idle() == []
        now[0] += 31
        assert await pool.reap_idle() == ["sesn_idle"]
        assert pool.running() == []
        assert pid is not None and not process_exists(pid)
        again = await pool.url_for("sesn_idle")
        assert await mcp_client.list_tools(again)
        assert pool.pid("sesn_idle") != pid
    finally:
        await pool.close()
