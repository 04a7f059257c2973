"""The session area under attack: the agent cannot change, fake or misuse what is placed for it.

The model is an attacker inside the sandbox (``DESIGN.md`` §5). Three layers are attacked: a
real ``tether sandbox`` driven over MCP and its ``/tether/resources`` placement endpoint (as the
gateway drives it), the whole gateway through the SDK with the scripted model, and
``sandbox_server.placement.Placement`` on a workspace in ``tmp_path`` where an interleaving must
be forced. The area tests hold for an unprivileged server too (its sandbox shares its uid).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import anthropic
import httpx2
import pytest

from sandbox_server.placement import Kind, Placement, PlacementError
from sandbox_server.workspace import AREA_DIR, Workspace
from tests.conftest import Scripts
from tests.escape.support import bash, requires_bwrap, text
from tests.support.processes import ServerProcess, running_sandbox, sandbox_client
from tests.support.sessions import send_and_stream, user_message

BRIEF = b"the brief\n"


def _tar(data: bytes) -> bytes:
    """A file resource's archive as the gateway sends it: one regular member."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("file")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --------------------------------------------------------------------------- a real sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    """A fresh ``tether sandbox`` per test: the session area one test makes must not help another."""
    workspace = tmp_path / "ws"
    with running_sandbox(["sandbox", "--workspace", str(workspace), "--port", "0"]) as server:
        yield server, workspace


def _place(server: ServerProcess, key: str, mount_path: str, data: bytes) -> httpx2.Response:
    return httpx2.put(
        f"{server.url}/tether/resources/{key}",
        content=_tar(data),
        headers={**server.headers, "x-tether-mount-path": mount_path, "x-tether-kind": "file"},
        timeout=30,
    )


def _placed(server: ServerProcess, timeout: float = 30) -> Any:
    answer = httpx2.get(f"{server.url}/tether/resources", headers=server.headers, timeout=timeout)
    answer.raise_for_status()
    return answer.json()["placed"]


@requires_bwrap
@pytest.mark.anyio
async def test_the_file_tools_cannot_change_mnt_session_through_a_symlink_in_the_workspace(
    sandbox: tuple[ServerProcess, Path],
) -> None:
    """Links the agent makes in its workspace to the area (``/workspace/via ->
    .tether-session/mnt/brief.txt``: the target need not resolve inside the sandbox) do not let
    ``write`` or ``edit`` change or add anything there, nor the server's record."""
    server, _ = sandbox
    assert _place(server, "k1", "/mnt/session/brief.txt", BRIEF).status_code == 200
    async with sandbox_client(server.url + "/mcp", server.headers) as client:
        made = await bash(
            client,
            "ln -s .tether-session/mnt/brief.txt via && ln -s .tether-session/mnt area "
            "&& ln -s .tether-session/placed.json ledger && echo linked",
        )
        assert text(made) == "linked\n"
        calls: list[tuple[str, dict[str, Any]]] = [
            ("edit", {"file_path": "/workspace/via", "old_string": "the", "new_string": "a forged"}),
            ("write", {"file_path": "/workspace/via", "content": "tampered\n"}),
            ("write", {"file_path": "/workspace/area/extra.txt", "content": "planted\n"}),
            ("write", {"file_path": "/workspace/ledger", "content": "[]"}),
        ]
        outcomes = [await client.call_tool(tool, arguments) for tool, arguments in calls]
        seen = text(await bash(client, "cat /mnt/session/brief.txt; ls /mnt/session"))
    assert seen == BRIEF.decode() + "brief.txt\n", f"/mnt/session was changed by the file tools: {seen!r}"
    assert all(o.is_error for o in outcomes), [text(o) for o in outcomes]
    assert _placed(server) == ["k1"]


@requires_bwrap
@pytest.mark.anyio
async def test_the_agent_cannot_make_or_touch_the_area_from_its_first_command(
    sandbox: tuple[ServerProcess, Path],
) -> None:
    """The server makes the area before it serves, so every command sees it masked by a
    read-only mount: nothing can be planted there, and it cannot be renamed away."""
    server, _ = sandbox
    async with sandbox_client(server.url + "/mcp", server.headers) as client:
        tried = text(
            await bash(
                client,
                f"mkfifo {AREA_DIR}/placed.json; echo '{{' > {AREA_DIR}/placed.json; "
                f"mv {AREA_DIR} moved; rmdir {AREA_DIR}; ls -A {AREA_DIR}; echo done",
            )
        )
    assert "Read-only file system" in tried and "Device or resource busy" in tried, tried
    assert tried.endswith("done\n")
    assert _placed(server) == []
    assert _place(server, "k1", "/mnt/session/brief.txt", BRIEF).status_code == 200
    assert _placed(server) == ["k1"]


def _fifo(area: Path) -> None:
    area.mkdir()
    os.mkfifo(area / "placed.json")


def _garbage(area: Path) -> None:
    area.mkdir()
    (area / "placed.json").write_text("{")


def _link_out(area: Path) -> None:
    area.symlink_to("/usr")


@requires_bwrap
@pytest.mark.parametrize("plant", [_fifo, _garbage, _link_out], ids=["fifo", "garbage", "link-out"])
def test_an_area_found_in_the_workspace_at_start_is_moved_aside_not_trusted(
    tmp_path: Path, plant: Any
) -> None:
    """A workspace may hold a ``.tether-session`` the server did not make (one from before areas
    were recorded, or made by an unprivileged server's agent): it is kept, moved aside, and a
    fresh area is made, so the listing neither hangs nor fails, and placement works."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    plant(workspace / AREA_DIR)
    with running_sandbox(["sandbox", "--workspace", str(workspace), "--port", "0"]) as server:
        assert _placed(server, timeout=10) == []
        assert _place(server, "k1", "/mnt/session/brief.txt", BRIEF).status_code == 200
        assert _placed(server) == ["k1"]
    assert [p.name for p in workspace.iterdir() if p.name.startswith(f"{AREA_DIR}.moved-")]


# --------------------------------------------------------------------------- through the gateway


def _agent(client: anthropic.Anthropic, marker: str) -> Any:
    return client.beta.agents.create(
        name="reviewer", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )


def _bash(command: str) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": "bash", "input": {"command": command}}]}


def _said(words: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": words}]}


def _results(events: list[Any]) -> list[tuple[bool, str]]:
    return [
        (bool(e.is_error), "".join(b.text for b in e.content if b.type == "text"))
        for e in events
        if e.type == "agent.tool_result"
    ]


def _ids(resources: Iterable[Any]) -> list[str]:
    return [r.id for r in resources]


def _errors(events: list[Any]) -> list[str]:
    return [f"{e.error.type}: {e.error.message}" for e in events if e.type == "session.error"]


def test_a_resource_added_later_is_real_whatever_the_agent_did_first(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """A session created without resources: the agent tries to plant a fake copy of a file it
    expects and a bad record. It cannot (the area is masked from its first command), and the
    file added later is the real one."""
    upload = client.beta.files.upload(file=("brief.txt", b"the real brief\n", "text/plain"))
    planted = f"{AREA_DIR}/mnt/uploads/{upload.id}"
    marker = scripts.add(
        [
            _bash(
                f"mkdir -p {AREA_DIR}/mnt/uploads; echo fake > {planted}; echo '{{' > {AREA_DIR}/placed.json; echo tried"
            ),
            _said("tried"),
            _bash(f"cat /mnt/session/uploads/{upload.id}"),
            _said("read"),
        ]
    )
    session = client.beta.sessions.create(agent=_agent(client, marker).id, environment_id=environment.id)
    first = send_and_stream(client, session.id, [user_message("get ready")])
    [(failed, said)] = _results(first)
    assert not failed and said.endswith("tried\n") and "Read-only file system" in said
    client.beta.sessions.resources.add(session.id, type="file", file_id=upload.id)
    second = send_and_stream(client, session.id, [user_message("read the brief")])
    assert _results(second) == [(False, "the real brief\n")], (_results(second), _errors(second))


def test_a_mount_path_with_non_ascii_characters_reaches_the_sandbox(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """A mount path with non-ASCII characters reaches the sandbox intact (it travels
    percent-encoded in a header to the placement endpoint)."""
    upload = client.beta.files.upload(file=("notes.txt", b"bonjour\n", "text/plain"))
    marker = scripts.add([_bash("cat /workspace/données/café.txt"), _said("read")])
    session = client.beta.sessions.create(
        agent=_agent(client, marker).id,
        environment_id=environment.id,
        resources=[{"type": "file", "file_id": upload.id, "mount_path": "/workspace/données/café.txt"}],
    )
    events = send_and_stream(client, session.id, [user_message("read the notes")])
    assert _errors(events) == []
    assert _results(events) == [(False, "bonjour\n")]


def test_a_repository_whose_name_is_the_session_area_is_refused(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """A repository's default mount path (``/workspace/<name>``) follows the mount-path rules too:
    a repository named ``.tether-session`` needs a ``mount_path`` of its own."""
    agent = _agent(client, scripts.add([_said("ok")]))
    with pytest.raises(anthropic.BadRequestError, match="keeps for itself"):
        client.beta.sessions.create(
            agent=agent.id,
            environment_id=environment.id,
            resources=[{"type": "github_repository", "url": "https://github.com/octo/.tether-session"}],
        )


def test_a_page_cursor_outlives_the_resource_it_names(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """A page cursor names a position, so a listing finishes even when the resource it was made
    from is deleted meanwhile."""
    upload = client.beta.files.upload(file=("a.txt", b"a", "text/plain"))
    session = client.beta.sessions.create(
        agent=_agent(client, scripts.add([_said("ok")])).id,
        environment_id=environment.id,
        resources=[
            {"type": "file", "file_id": upload.id, "mount_path": f"/workspace/{name}.txt"}
            for name in ("one", "two", "three")
        ],
    )
    one, two, three = _ids(session.resources)
    first = client.beta.sessions.resources.list(session.id, limit=1)
    assert _ids(first.data) == [one]
    client.beta.sessions.resources.delete(one, session_id=session.id)
    following = first.get_next_page()
    assert _ids(following.data) == [two]
    assert _ids(following.get_next_page().data) == [three]


# --------------------------------------------------------------------------- Placement itself


class _Interleaved(Placement):
    """Forces both placements to read the record before either writes it, if they could."""

    def __init__(self, ws: Workspace, barrier: threading.Barrier) -> None:
        super().__init__(ws)
        self.barrier = barrier

    def placed(self) -> list[str]:
        keys = super().placed()
        with contextlib.suppress(threading.BrokenBarrierError):
            self.barrier.wait(timeout=10)
        return keys


def test_two_placements_at_once_both_stay_in_the_record(tmp_path: Path) -> None:
    """Placements in one workspace take turns, so the record of placed keys never loses one (the
    gateway would send it again and be told it already exists)."""
    ws = Workspace.open(tmp_path / "ws")
    placement = _Interleaved(ws, threading.Barrier(2))
    failures: list[BaseException] = []

    def place(key: str, where: str) -> None:
        archive: IO[bytes] = io.BytesIO(_tar(key.encode()))
        kind: Kind = "file"
        try:
            placement.place(key, where, kind, archive)
        except BaseException as exc:  # reported below, with the record
            failures.append(exc)

    threads = [
        threading.Thread(target=place, args=("a", "/mnt/session/a.txt")),
        threading.Thread(target=place, args=("b", "/mnt/session/b.txt")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert sorted(Placement(ws).placed()) == ["a", "b"]


def test_an_area_made_by_the_servers_own_uid_before_any_placement_is_not_trusted(tmp_path: Path) -> None:
    """An unprivileged server's sandbox runs as the server's own uid, so ownership cannot tell the
    agent's ``.tether-session`` from the server's: the area is the one whose inode the server
    recorded beside the workspace. As root the test process stands in for that agent."""
    ws = Workspace.open(tmp_path / "ws")
    planted = ws.root / AREA_DIR / "mnt" / "uploads"
    planted.mkdir(parents=True)
    (planted / "file_expected").write_text("fake\n")
    Placement(ws).place("k1", "/mnt/session/brief.txt", "file", io.BytesIO(_tar(BRIEF)))
    area = ws.root / AREA_DIR / "mnt"
    assert (area / "brief.txt").read_bytes() == BRIEF
    assert sorted(p.name for p in area.iterdir()) == ["brief.txt"], "the agent's files are in the area"


def test_a_workspace_resource_never_lands_in_the_area_through_a_symlinked_parent(tmp_path: Path) -> None:
    """A resource lands where its path says or nowhere: a parent the agent made a symlink
    (``/workspace/data -> .tether-session/mnt``) is refused, so nothing of the agent's reaches
    the read-only area."""
    ws = Workspace.open(tmp_path / "ws")
    Placement(ws).place("k0", "/mnt/session/brief.txt", "file", io.BytesIO(_tar(BRIEF)))
    (ws.root / "data").symlink_to(f"{AREA_DIR}/mnt")
    with contextlib.suppress(PlacementError):
        Placement(ws).place("k1", "/workspace/data/x.csv", "file", io.BytesIO(_tar(b"a,b\n")))
    assert sorted(os.listdir(ws.root / AREA_DIR / "mnt")) == ["brief.txt"]
