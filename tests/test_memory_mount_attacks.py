"""Memory mounts under attack: what the model does in ``/mnt/memory`` never costs a store its memories.

The model is hostile (``DESIGN.md`` §5) and owns everything in a ``read_write`` mount, so it may
remove what it sees there; what it must not do is make the sync delete or lose memories it did
not remove, keep a store from being mounted, swell what the gateway has to hold, or write into
a ``read_only`` mount or the session area. Two layers: a real ``tether sandbox`` driven as the
gateway drives it (``PUT``/``GET /tether/memory/{slug}`` and MCP tool calls), and the whole
gateway through the SDK with the scripted model, asserting on the store itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from sandbox_server.workspace import AREA_DIR
from tests.conftest import Scripts
from tests.escape.support import bash, requires_bwrap, text
from tests.support.processes import ServerProcess, running_sandbox, sandbox_client
from tests.support.sessions import send_and_stream, user_message

MOUNT = "/mnt/memory/team-notes"
ANSWER_LIMIT = 32 << 20
"""What the gateway may have to hold of one mount's listing, whatever the mount holds."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- a real sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    workspace = tmp_path / "ws"
    with running_sandbox(["sandbox", "--workspace", str(workspace), "--port", "0"]) as server:
        yield server, workspace


def _mount(server: ServerProcess, slug: str, access: str, files: dict[str, str]) -> None:
    """Mount ``files`` as the gateway does for a store holding them."""
    body = {
        "access": access,
        "apply": files,
        "expect": dict.fromkeys(files),
        "base": {path: _sha(content) for path, content in files.items()},
    }
    answer = httpx2.put(f"{server.url}/tether/memory/{slug}", json=body, headers=server.headers, timeout=30)
    assert answer.json() == {"skipped": {}}


def _listing(server: ServerProcess, slug: str) -> httpx2.Response:
    return httpx2.get(f"{server.url}/tether/memory/{slug}", headers=server.headers, timeout=120)


@requires_bwrap
@pytest.mark.anyio
async def test_the_file_tools_cannot_write_a_read_only_mount_or_the_record_through_symlinks(
    sandbox: tuple[ServerProcess, Path],
) -> None:
    """Links in the writable mount (``../ro``, ``../../memory.json``) and in the workspace
    (``.tether-session/memory/ro``) lead ``write`` and ``edit`` nowhere: the read-only store's
    file and the server's record are unchanged, and nothing is added."""
    server, workspace = sandbox
    _mount(server, "rw", "read_write", {"a.md": "A"})
    _mount(server, "ro", "read_only", {"b.md": "B"})
    area = workspace / AREA_DIR
    record = (area / "memory.json").read_bytes()
    async with sandbox_client(server.url + "/mcp", server.headers) as client:
        made = await bash(
            client,
            "cd /mnt/memory/rw && ln -s ../ro dir && ln -s ../ro/b.md file && ln -s ../../memory.json rec "
            f"&& cd /workspace && ln -s {AREA_DIR}/memory/ro wro && echo linked",
        )
        assert text(made) == "linked\n"
        calls: list[tuple[str, dict[str, Any]]] = [
            ("write", {"file_path": "/mnt/memory/rw/dir/new.md", "content": "planted"}),
            ("write", {"file_path": "/mnt/memory/rw/file", "content": "forged"}),
            ("edit", {"file_path": "/mnt/memory/rw/file", "old_string": "B", "new_string": "forged"}),
            ("write", {"file_path": "/mnt/memory/rw/rec", "content": "{}"}),
            ("write", {"file_path": "/workspace/wro/sub/new.md", "content": "planted"}),
            ("write", {"file_path": "/mnt/memory/ro/b.md", "content": "forged"}),
            ("write", {"file_path": "/mnt/memory/other/x.md", "content": "planted"}),
        ]
        outcomes = [await client.call_tool(tool, arguments) for tool, arguments in calls]
    assert all(o.is_error and "read-only" in text(o) for o in outcomes), [text(o) for o in outcomes]
    assert sorted(p.name for p in (area / "memory" / "ro").iterdir()) == ["b.md"]
    assert (area / "memory" / "ro" / "b.md").read_text() == "B"
    assert (area / "memory.json").read_bytes() == record
    assert sorted(p.name for p in (area / "memory").iterdir()) == ["ro", "rw"]


@requires_bwrap
@pytest.mark.anyio
async def test_the_listing_the_gateway_holds_stays_bounded_and_names_every_file(
    sandbox: tuple[ServerProcess, Path],
) -> None:
    """Text the model writes is sent as JSON, where a control character takes six bytes: 150
    files of 100 kB of U+0001 (15 MB on disk) made a 93 MB answer, and the mount may hold
    4000 of them (2.4 GB, held at once by the gateway serving every tenant). The answer stays
    bounded; every file is still listed with its token, so what is not sent now waits."""
    server, _ = sandbox
    _mount(server, "rw", "read_write", {})
    async with sandbox_client(server.url + "/mcp", server.headers) as client:
        made = await bash(
            client,
            "cd /mnt/memory/rw && head -c 102400 /dev/zero | tr '\\0' '\\1' > f0 "
            "&& for i in $(seq 1 149); do cp f0 f$i; done && ls | wc -l",
        )
    assert text(made) == "150\n"
    answer = _listing(server, "rw")
    assert answer.status_code == 200
    assert len(answer.content) <= ANSWER_LIMIT, f"the listing is {len(answer.content)} bytes"
    listed = answer.json()
    assert sorted(listed["files"]) == sorted(f"f{i}" for i in range(150))
    assert len(set(listed["files"].values())) == 1 and not next(iter(listed["files"].values())).startswith(
        "!"
    )
    assert 0 < len(listed["changed"]) < 150


# --------------------------------------------------------------------------- through the gateway


def _agent(client: anthropic.Anthropic, marker: str) -> Any:
    return client.beta.agents.create(
        name="hostile", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )


def _bash(command: str) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": "bash", "input": {"command": command}}]}


def _done() -> dict[str, Any]:
    return {"content": [{"type": "text", "text": "done"}]}


def _results(events: list[Any]) -> list[str]:
    return [
        "".join(b.text for b in e.content if b.type == "text")
        for e in events
        if e.type == "agent.tool_result"
    ]


def _memories(client: anthropic.Anthropic, store_id: str) -> dict[str, str | None]:
    listed = client.beta.memory_stores.memories.list(store_id, view="full")
    return {m.path: m.content for m in listed if m.type == "memory"}


def _store(client: anthropic.Anthropic, name: str = "Team notes", **files: str) -> Any:
    store = client.beta.memory_stores.create(name=name)
    for path, content in files.items():
        client.beta.memory_stores.memories.create(store.id, path=path, content=content)
    return store


def _run(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, store: Any, *commands: str
) -> tuple[Any, list[str]]:
    """A session with ``store`` mounted read-write whose model runs ``commands``, one tool call each."""
    marker = scripts.add([*(_bash(c) for c in commands), _done()])
    session = client.beta.sessions.create(
        agent=_agent(client, marker).id,
        environment_id=environment.id,
        resources=[{"type": "memory_store", "memory_store_id": store.id}],
    )
    return session, _results(send_and_stream(client, session.id, [user_message("go")]))


def _deleted_by(client: anthropic.Anthropic, store_id: str, session_id: str) -> list[str | None]:
    versions = client.beta.memory_stores.memory_versions.list(store_id, session_id=session_id)
    return [v.path for v in versions if v.operation == "deleted"]


def test_a_file_name_that_is_not_utf8_does_not_stop_the_mount_being_saved(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """A name the model makes of arbitrary bytes made the sandbox's listing fail (500), so that
    mount was never synced again: the model's next memories were silently not saved."""
    store = _store(client)
    _, results = _run(
        client,
        environment,
        scripts,
        store,
        f"cd {MOUNT} && touch \"$(printf 'bad\\377')\" && echo ok > good.md",
    )
    assert _memories(client, store.id) == {"/good.md": "ok\n"}, results
    assert "could not be synced" not in results[0]


def test_a_memory_the_mount_could_not_take_is_not_deleted_from_the_store(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """An empty directory the model made (``plan``) stands where another writer then creates the
    memory ``/plan``: the mount cannot take it, yet the sandbox recorded it as there, so the next
    sync saw it gone and deleted it from the store in the session's name."""
    store = _store(client)
    marker = scripts.add([_bash(f"mkdir {MOUNT}/plan"), _done(), _bash("echo working"), _done()])
    session = client.beta.sessions.create(
        agent=_agent(client, marker).id,
        environment_id=environment.id,
        resources=[{"type": "memory_store", "memory_store_id": store.id}],
    )
    send_and_stream(client, session.id, [user_message("start")])
    client.beta.memory_stores.memories.create(store.id, path="/plan", content="the other writer's plan\n")
    results = _results(send_and_stream(client, session.id, [user_message("go on")]))
    assert _memories(client, store.id) == {"/plan": "the other writer's plan\n"}, results
    assert _deleted_by(client, store.id, session.id) == []


def test_a_flood_of_entries_does_not_hide_memories_from_the_sync(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """The listing stops at 4000 entries; 4000 FIFOs in a directory that sorts first pushed the
    store's memories out of it, and the sync took them for removed and deleted them."""
    store = _store(client, **{"/keep.md": "kept\n", "/zebra/notes.md": "stripes\n"})
    session, _ = _run(
        client, environment, scripts, store, f"mkdir {MOUNT}/0 && cd {MOUNT}/0 && mkfifo $(seq 4000)"
    )
    assert _memories(client, store.id) == {"/keep.md": "kept\n", "/zebra/notes.md": "stripes\n"}
    assert _deleted_by(client, store.id, session.id) == []


def test_a_directory_of_memories_replaced_by_a_file_is_saved_as_that_file(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """``notes/`` (holding ``notes/a.md``) becomes the file ``notes``: the new file was written
    before the old memory was removed, so it conflicted with it, was reported as another
    session's doing, and removed from the mount: the model's file was lost."""
    store = _store(client, **{"/notes/a.md": "old\n"})
    _, results = _run(
        client,
        environment,
        scripts,
        store,
        f"rm -r {MOUNT}/notes && echo flat > {MOUNT}/notes",
        f"cat {MOUNT}/notes",
    )
    assert _memories(client, store.id) == {"/notes": "flat\n"}, results
    assert results[1] == "flat\n"


def test_memories_whose_text_did_not_fit_in_one_answer_are_saved_by_the_next_sync(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """The other side of a bounded listing: 40 memories of 100 kB of U+0001 (24 MB as JSON) do
    not fit in one answer; those listed without their text are neither saved half nor removed
    from the mount as unsaveable, but saved by the next sync."""
    store = _store(client)
    command = (
        f"cd {MOUNT} && head -c 102400 /dev/zero | tr '\\0' '\\1' > f00 "
        "&& for i in $(seq -w 1 39); do cp f00 f$i; done"
    )
    _, results = _run(client, environment, scripts, store, command, f"ls {MOUNT} | wc -l")
    assert sorted(_memories(client, store.id)) == [f"/f{i:02}" for i in range(40)], results
    assert results == ["(no output)", "40\n"]


def test_a_store_full_of_control_characters_can_still_be_mounted(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """A store holds 8 MB; as JSON, U+0001 takes six bytes, so 60 memories of 100 kB of it (what a
    read-write session's model may save) made the gateway's PUT of the store 37 MB, over the
    sandbox's 32 MB limit: no later session could mount the store."""
    content = "\x01" * 102_400
    store = _store(client, **{f"/blob{i:02}.txt": content for i in range(60)})
    _, results = _run(client, environment, scripts, store, f"ls {MOUNT} | wc -l")
    assert results[0].startswith("60\n"), results


def test_a_store_whose_name_starts_with_an_underscore_is_mounted(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    """The gateway mounts ``_scratch`` at ``/mnt/memory/_scratch``; the sandbox accepted only
    slugs starting with a letter or digit (and at most 64 characters, though ``-2`` may follow
    one), so such a store was never mounted."""
    store = _store(client, "_scratch", **{"/x.md": "here\n"})
    _, results = _run(client, environment, scripts, store, "cat /mnt/memory/_scratch/x.md")
    assert results[0] == "here\n", results
