"""Session resources through the official SDK: files attached to a session reach its sandbox.

``sessions.create(resources=…)`` and ``sessions.resources`` add/list/retrieve/update/delete,
strictly parsed into the SDK's own types; the scripted model then reads, lists and tries to
change what was placed, and the tests check what the sandbox saw and what the host holds.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from anthropic.types.beta.sessions import (
    BetaManagedAgentsDeleteSessionResource,
    BetaManagedAgentsFileResource,
    BetaManagedAgentsGitHubRepositoryResource,
)
from pydantic import BaseModel

from tests.conftest import Scripts, gateway_workspaces
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message

CSV = b"name,score\nada,3\nlin,5\n"


def _strict(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    """Parse as the SDK would, and fail on a field the SDK's type does not have."""
    parsed = model.model_validate(raw, strict=False)
    assert set(raw) <= set(type(parsed).model_fields), set(raw) - set(type(parsed).model_fields)
    return parsed


def _raw(client: anthropic.Anthropic, path: str) -> Any:
    return client.get(path, cast_to=object)


def _agent(client: anthropic.Anthropic, marker: str) -> Any:
    return client.beta.agents.create(
        name="resourceful",
        model="claude-sonnet-4-6",
        system=marker,
        tools=[{"type": "agent_toolset_20260401"}],
    )


def _bash(command: str) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": "bash", "input": {"command": command}}]}


def _tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": name, "input": arguments}]}


def _results(events: list[Any]) -> list[tuple[bool, str]]:
    return [
        (bool(e.is_error), "".join(block.text for block in e.content if block.type == "text"))
        for e in events
        if e.type == "agent.tool_result"
    ]


def test_file_resources_are_listed_retrieved_and_deleted_as_the_sdk_types(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    upload = client.beta.files.upload(file=("scores.csv", CSV, "text/csv"))
    agent = _agent(client, scripts.add([{"content": [{"type": "text", "text": "ok"}]}]))
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[
            {"type": "file", "file_id": upload.id},
            {"type": "file", "file_id": upload.id, "mount_path": "/workspace/data/scores.csv"},
        ],
    )
    default, placed = session.resources
    assert default.mount_path == f"/mnt/session/uploads/{upload.id}"
    assert placed.mount_path == "/workspace/data/scores.csv"
    raw = _raw(client, f"/v1/sessions/{session.id}/resources")
    assert raw["next_page"] is None
    listed = [_strict(BetaManagedAgentsFileResource, item) for item in raw["data"]]
    assert [r.id for r in listed] == [default.id, placed.id]
    first = client.beta.sessions.resources.list(session.id, limit=1)
    assert [r.id for r in first.data] == [default.id]
    assert [r.id for r in first.get_next_page().data] == [placed.id]
    fetched = _strict(
        BetaManagedAgentsFileResource, _raw(client, f"/v1/sessions/{session.id}/resources/{placed.id}")
    )
    assert fetched.file_id == upload.id
    added = client.beta.sessions.resources.add(
        session.id, type="file", file_id=upload.id, mount_path="/mnt/session/x.csv"
    )
    assert added.mount_path == "/mnt/session/x.csv"
    deleted = client.beta.sessions.resources.delete(placed.id, session_id=session.id)
    _strict(BetaManagedAgentsDeleteSessionResource, deleted.model_dump())
    assert deleted.type == "session_resource_deleted"
    left = [r.id for r in client.beta.sessions.resources.list(session.id)]
    assert left == [default.id, added.id]
    assert [r.id for r in client.beta.sessions.retrieve(session.id).resources] == left
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.resources.retrieve(placed.id, session_id=session.id)
    with pytest.raises(anthropic.BadRequestError, match="only github_repository"):
        client.beta.sessions.resources.update(default.id, session_id=session.id, authorization_token="t")


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ({"mount_path": "relative/x"}, "must be absolute"),
        ({"mount_path": "/etc/passwd"}, "must be below /workspace or /mnt/session"),
        ({"mount_path": "/workspace/../etc/x"}, "normal form"),
        ({"mount_path": "/workspace"}, "must be below"),
        ({"mount_path": "/mnt/session"}, "must be below"),
        ({"mount_path": "/workspace/.tether-session/x"}, "keeps for itself"),
        ({"mount_path": "/mnt/session/skills/x"}, "keeps for itself"),
        ({"mount_path": "/workspace/a\nb"}, "printable"),
        ({"file_id": "file_doesnotexist"}, "not found"),
        ({"type": "memory_store", "memory_store_id": "memstore_x"}, "memory store 'memstore_x' not found"),
        ({"mount_path": "/mnt/memory/x"}, "must be below /workspace or /mnt/session"),
        ({"type": "github_repository", "url": "https://gitlab.com/a/b"}, "url"),
        (
            {
                "type": "github_repository",
                "url": "https://github.com/a/b",
                "checkout": {"type": "commit", "sha": "abc"},
            },
            "sha",
        ),
    ],
)
def test_bad_resources_are_refused_with_a_400_naming_the_problem(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, resource: dict[str, Any], message: str
) -> None:
    upload = client.beta.files.upload(file=("a.txt", b"a", "text/plain"))
    agent = _agent(client, scripts.add([{"content": [{"type": "text", "text": "ok"}]}]))
    body: dict[str, Any] = {"type": "file", "file_id": upload.id, **resource}
    if body["type"] != "file":
        body.pop("file_id")
    with pytest.raises(anthropic.BadRequestError, match=message):
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id, resources=[body])  # type: ignore[list-item]
    assert client.beta.sessions.list(agent_id=agent.id).data == []


def test_overlapping_mount_paths_are_refused_at_create_and_at_add(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    upload = client.beta.files.upload(file=("a.txt", b"a", "text/plain"))
    agent = _agent(client, scripts.add([{"content": [{"type": "text", "text": "ok"}]}]))
    with pytest.raises(anthropic.BadRequestError, match="overlaps"):
        client.beta.sessions.create(
            agent=agent.id,
            environment_id=environment.id,
            resources=[
                {"type": "file", "file_id": upload.id, "mount_path": "/workspace/d"},
                {"type": "file", "file_id": upload.id, "mount_path": "/workspace/d/e"},
            ],
        )
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[{"type": "file", "file_id": upload.id, "mount_path": "/workspace/d"}],
    )
    with pytest.raises(anthropic.BadRequestError, match="overlaps"):
        client.beta.sessions.resources.add(
            session.id, type="file", file_id=upload.id, mount_path="/workspace/d"
        )
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.resources.add("sesn_missing", type="file", file_id=upload.id)


def test_a_repository_token_is_write_only(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    agent = _agent(client, scripts.add([{"content": [{"type": "text", "text": "ok"}]}]))
    token = "ghs_" + "s3cr3t" * 6
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[
            {
                "type": "github_repository",
                "url": "https://github.com/octo/hello-world",
                "authorization_token": token,
                "checkout": {"type": "branch", "name": "main"},
            }
        ],
    )
    (repo,) = session.resources
    assert repo.mount_path == "/workspace/hello-world"
    raw = _raw(client, f"/v1/sessions/{session.id}/resources/{repo.id}")
    _strict(BetaManagedAgentsGitHubRepositoryResource, raw)
    updated = client.beta.sessions.resources.update(
        repo.id, session_id=session.id, authorization_token=token + "2"
    )
    assert updated.id == repo.id
    for path in (f"/v1/sessions/{session.id}", f"/v1/sessions/{session.id}/resources", "/v1/sessions"):
        assert "s3cr3t" not in json.dumps(_raw(client, path))


def test_files_reach_the_sandbox_read_only_under_mnt_session_and_as_the_agents_own_under_workspace(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, gateway: ServerProcess
) -> None:
    upload = client.beta.files.upload(file=("scores.csv", CSV, "text/csv"))
    late = client.beta.files.upload(file=("late.txt", b"added mid-session\n", "text/plain"))
    area = f"/mnt/session/uploads/{upload.id}"
    marker = scripts.add(
        [
            _tool("read", file_path=area),
            _bash(f"cat {area} && cat /workspace/data/scores.csv && ls -A /mnt/session/uploads"),
            _bash(
                f"echo x >> {area}; echo rc=$?; rm -f {area}; echo rm=$?; ls -A /workspace/.tether-session"
            ),
            _tool("write", file_path=area, content="mine"),
            _tool("write", file_path="/workspace/.tether-session/placed.json", content="[]"),
            _bash("echo appended >> /workspace/data/scores.csv && tail -1 /workspace/data/scores.csv"),
            _tool("grep", pattern="ada"),
            {"content": [{"type": "text", "text": "first turn done"}]},
            _bash("cat /mnt/session/late.txt"),
            {"content": [{"type": "text", "text": "second turn done"}]},
        ]
    )
    agent = _agent(client, marker)
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[
            {"type": "file", "file_id": upload.id},
            {"type": "file", "file_id": upload.id, "mount_path": "/workspace/data/scores.csv"},
        ],
    )
    events = send_and_stream(client, session.id, [user_message("look at the data")])
    results = _results(events)
    assert results[0] == (False, "     1\tname,score\n     2\tada,3\n     3\tlin,5\n")
    assert results[1] == (False, CSV.decode() * 2 + upload.id + "\n")
    denied, rc, removal, rm = results[2][1].splitlines()
    assert not results[2][0] and "Permission denied" in denied and rc == "rc=1" and rm == "rm=1"
    assert "Read-only file system" in removal  # and nothing of the server's bookkeeping shows
    assert results[3] == (True, f"{area} is read-only: /mnt/session holds the session's resources.")
    assert results[4][0] and "is reserved" in results[4][1]
    assert results[5] == (False, "appended\n")
    assert results[6] == (False, "/workspace/data/scores.csv:2:ada,3\n")  # the area is not searched twice
    assert not any(e.type == "session.error" for e in events)

    client.beta.sessions.resources.add(
        session.id, type="file", file_id=late.id, mount_path="/mnt/session/late.txt"
    )
    events = send_and_stream(client, session.id, [user_message("and now?")])
    assert _results(events) == [(False, "added mid-session\n")]

    host = gateway_workspaces(gateway) / session.id
    assert (host / ".tether-session" / "mnt" / "uploads" / upload.id).read_bytes() == CSV
    assert (host / "data" / "scores.csv").read_bytes() == CSV + b"appended\n"


def test_a_deleted_upload_is_reported_as_a_session_error_and_the_session_runs_on(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    upload = client.beta.files.upload(file=("gone.txt", b"soon gone", "text/plain"))
    marker = scripts.add(
        [_bash("ls /mnt/session/uploads 2>&1; echo done"), {"content": [{"type": "text", "text": "ok"}]}]
    )
    session = client.beta.sessions.create(
        agent=_agent(client, marker).id,
        environment_id=environment.id,
        resources=[{"type": "file", "file_id": upload.id}],
    )
    client.beta.files.delete(upload.id)
    events = send_and_stream(client, session.id, [user_message("go")])
    errors = [e for e in events if e.type == "session.error"]
    assert len(errors) == 1 and upload.id in errors[0].error.message
    assert errors[0].error.retry_status.type == "retrying"
    assert _results(events) == [
        (False, "ls: cannot access '/mnt/session/uploads': No such file or directory\ndone\n")
    ]
    assert events[-1].type == "session.status_idle"
