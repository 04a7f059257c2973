"""``github_repository`` session resources, cloned from a loopback Git server into the sandbox.

The gateway's ``TETHER_GIT_BASE_URL`` points at a real Git smart-HTTP server on loopback
(``tests.support.git_server``) standing in for GitHub. The gateway clones with the resource's
token, the sandbox gets the checked-out tree at its mount path, and the token is nowhere the
agent or a reader of the session can reach: not in the workspace, the log or the API.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts, gateway_workspaces
from tests.support.git_server import Executable, GitServer, Symlink, serve_git
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import send_and_stream, user_message

TOKEN = "ghs_" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def git(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with serve_git(tmp_path_factory.mktemp("git")) as server:
        yield server


@pytest.fixture(scope="module")
def git_gateway(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str, git: GitServer
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("gateway-git")
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_GIT_BASE_URL": git.base_url,
    }
    with running_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env) as server:
        server.data_dir = data_dir  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def sdk(git_gateway: ServerProcess, api_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=git_gateway.url, api_key=api_key, max_retries=0, timeout=60) as client:
        yield client


def _session(sdk: anthropic.Anthropic, marker: str, resource: dict[str, Any]) -> Any:
    agent = sdk.beta.agents.create(
        name="cloner", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )
    environment = sdk.beta.environments.create(name="git-env")
    return sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id, resources=[resource])  # type: ignore[list-item]


def _bash(command: str) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": "bash", "input": {"command": command}}]}


def _outputs(events: list[Any]) -> list[str]:
    return [
        "".join(block.text for block in e.content if block.type == "text")
        for e in events
        if e.type == "agent.tool_result"
    ]


def _files_under(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path


def test_a_private_repository_is_cloned_at_the_branch_into_the_workspace_without_its_token(
    sdk: anthropic.Anthropic, git: GitServer, git_gateway: ServerProcess, scripts: Scripts
) -> None:
    repo = git.create_repo("octo", "tools", token=TOKEN)
    repo.commit("main", {"README.md": b"main branch\n"})
    repo.commit(
        "feature",
        {
            "README.md": b"feature branch\n",
            "bin/run.sh": Executable(b"#!/bin/sh\necho ran\n"),
            "link": Symlink("README.md"),
        },
    )
    marker = scripts.add(
        [
            _bash(
                "cd /workspace/tools && cat README.md && ./bin/run.sh && readlink link && ls -A && touch mine"
            ),
            _bash("grep -rl x-access-token /workspace /mnt 2>/dev/null; cat /workspace/tools/.git/config"),
            {"content": [{"type": "text", "text": "cloned"}]},
        ]
    )
    session = _session(
        sdk,
        marker,
        {
            "type": "github_repository",
            "url": "https://github.com/octo/tools",
            "authorization_token": TOKEN,
            "checkout": {"type": "branch", "name": "feature"},
        },
    )
    events = send_and_stream(sdk, session.id, [user_message("look at the repo")])
    assert not [e for e in events if e.type == "session.error"]
    listing, config = _outputs(events)
    assert listing == "feature branch\nran\nREADME.md\n.git\nREADME.md\nbin\nlink\n"
    assert "https://github.com/octo/tools.git" in config and TOKEN not in config
    host = gateway_workspaces(git_gateway) / session.id
    assert (host / "tools" / "mine").exists()  # the clone is the agent's own to change
    for path in _files_under(host):
        assert TOKEN.encode() not in path.read_bytes(), path
    authorizations = {
        r.headers.get("HTTP_AUTHORIZATION") for r in git.requests if "/octo/tools.git" in r.path
    }
    assert authorizations - {None} and all(a is None or a.startswith("Basic ") for a in authorizations)
    log = sdk.beta.sessions.events.list(session.id, limit=1000)
    assert TOKEN not in log.model_dump_json()


def test_a_commit_is_checked_out_and_a_refused_token_is_a_session_error_that_does_not_stop_the_session(
    sdk: anthropic.Anthropic, git: GitServer, scripts: Scripts
) -> None:
    repo = git.create_repo("octo", "history", token=TOKEN)
    first = repo.commit("main", {"VERSION": b"1\n"})
    repo.commit("main", {"VERSION": b"2\n"})
    marker = scripts.add([_bash("cat /workspace/old/VERSION"), {"content": [{"type": "text", "text": "ok"}]}])
    session = _session(
        sdk,
        marker,
        {
            "type": "github_repository",
            "url": "https://github.com/octo/history.git",
            "authorization_token": TOKEN,
            "checkout": {"type": "commit", "sha": first},
            "mount_path": "/workspace/old",
        },
    )
    events = send_and_stream(sdk, session.id, [user_message("which version?")])
    assert _outputs(events) == ["1\n"]

    marker = scripts.add([_bash("ls /workspace; echo listed"), {"content": [{"type": "text", "text": "ok"}]}])
    refused = _session(
        sdk,
        marker,
        {
            "type": "github_repository",
            "url": "https://github.com/octo/history",
            "authorization_token": "wrong-token",
        },
    )
    events = send_and_stream(sdk, refused.id, [user_message("go")])
    (error,) = [e for e in events if e.type == "session.error"]
    assert error.error.type == "repository_authentication_error"
    assert error.error.repository_url == "https://github.com/octo/history"
    assert error.error.retry_status.type == "retrying" and "wrong-token" not in error.error.message
    assert _outputs(events) == ["listed\n"] and events[-1].type == "session.status_idle"
