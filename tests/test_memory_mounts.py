"""Memory stores mounted in sessions, through the official SDK and the real sandbox.

A store attached with ``sessions.create(resources=[{"type": "memory_store", …}])`` shows at
``/mnt/memory/<slug>``; what the session changes there is written back as memory versions
authored by the session when each tool call ends, the next session reads it, a read-only
mount refuses changes, and two writers of one memory resolve by its ``content_sha256``.
"""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsSession
from anthropic.types.beta.sessions import BetaManagedAgentsMemoryStoreResource

from tests.conftest import Scripts
from tests.support.sessions import send_and_stream, user_message

MOUNT = "/mnt/memory/team-notes"


def _agent(client: anthropic.Anthropic, marker: str) -> Any:
    return client.beta.agents.create(
        name="remembering",
        model="claude-sonnet-4-6",
        system=marker,
        tools=[{"type": "agent_toolset_20260401"}],
    )


def _tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": name, "input": arguments}]}


def _done(text: str = "done") -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def _results(events: list[Any]) -> list[tuple[bool, str]]:
    return [
        (bool(e.is_error), "".join(block.text for block in e.content if block.type == "text"))
        for e in events
        if e.type == "agent.tool_result"
    ]


def _memories(client: anthropic.Anthropic, store_id: str) -> dict[str, str]:
    listed = client.beta.memory_stores.memories.list(store_id, view="full")
    return {m.path: m.content for m in listed if m.type == "memory"}


def _store(client: anthropic.Anthropic, name: str = "Team notes", **files: str) -> Any:
    store = client.beta.memory_stores.create(name=name, description="What the team learned.")
    for path, content in files.items():
        client.beta.memory_stores.memories.create(store.id, path=path, content=content)
    return store


def _session(client: anthropic.Anthropic, agent: Any, environment: Any, store: Any, **attachment: Any) -> Any:
    resource = {"type": "memory_store", "memory_store_id": store.id, **attachment}
    return client.beta.sessions.create(agent=agent.id, environment_id=environment.id, resources=[resource])


def test_a_session_changes_its_store_through_the_mount_and_the_versions_name_it(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    store = _store(client, **{"/facts.md": "the build uses make\n"})
    marker = scripts.add(
        [
            _tool("read", file_path=f"{MOUNT}/facts.md"),
            _tool("bash", command=f"mkdir -p {MOUNT}/lessons && echo 'use -j2' > {MOUNT}/lessons/build.md"),
            _tool("edit", file_path=f"{MOUNT}/facts.md", old_string="make", new_string="ninja"),
            _tool("bash", command=f"rm {MOUNT}/lessons/build.md && ls -R /mnt/memory"),
            _done(),
        ]
    )
    session = _session(client, _agent(client, marker), environment, store, instructions="Keep it short.")

    raw = client.get(f"/v1/sessions/{session.id}", cast_to=object)
    BetaManagedAgentsSession.model_validate(raw)
    attached = BetaManagedAgentsMemoryStoreResource.model_validate(raw["resources"][0])
    assert (attached.mount_path, attached.access, attached.name) == (MOUNT, "read_write", "Team notes")
    assert attached.description == "What the team learned." and attached.instructions == "Keep it short."
    listed = client.beta.sessions.resources.list(session.id)
    assert [r.type for r in listed] == ["memory_store"]

    events = send_and_stream(client, session.id, [user_message("remember")])
    results = _results(events)
    assert not any(error for error, _ in results), results
    assert "the build uses make" in results[0][1]
    assert "facts.md" in results[3][1] and "build.md" not in results[3][1]
    assert not [e for e in events if e.type == "session.error"]
    assert _memories(client, store.id) == {"/facts.md": "the build uses ninja\n"}

    versions = list(client.beta.memory_stores.memory_versions.list(store.id, session_id=session.id))
    assert sorted((v.operation, v.path) for v in versions) == [
        ("created", "/lessons/build.md"),
        ("deleted", "/lessons/build.md"),
        ("modified", "/facts.md"),
    ]
    assert all(v.created_by.type == "session_actor" for v in versions)

    system = str(scripts.requests_for(marker)[0]["system"])
    assert f"Team notes at {MOUNT} (read-write): What the team learned." in system
    assert "Instructions: Keep it short." in system


def test_the_next_session_reads_what_the_last_wrote_and_a_read_only_mount_refuses_changes(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    store = _store(client)
    writer = scripts.add(
        [_tool("write", file_path=f"{MOUNT}/style.md", content="tabs, not spaces\n"), _done()]
    )
    first = _session(client, _agent(client, writer), environment, store)
    send_and_stream(client, first.id, [user_message("note the style")])
    assert _memories(client, store.id) == {"/style.md": "tabs, not spaces\n"}

    reader = scripts.add(
        [
            _tool("bash", command=f"cat {MOUNT}/style.md; echo x > {MOUNT}/style.md; echo rc=$?"),
            _tool("write", file_path=f"{MOUNT}/other.md", content="nope"),
            _done(),
        ]
    )
    second = _session(client, _agent(client, reader), environment, store, access="read_only")
    results = _results(send_and_stream(client, second.id, [user_message("read the style")]))
    assert "tabs, not spaces" in results[0][1] and "Read-only file system" in results[0][1]
    assert "rc=1" in results[0][1]
    assert results[1][0] and "read-only" in results[1][1]
    assert _memories(client, store.id) == {"/style.md": "tabs, not spaces\n"}
    assert not list(client.beta.memory_stores.memory_versions.list(store.id, session_id=second.id))


def test_what_cannot_be_a_memory_is_not_saved_and_the_model_is_told(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    store = _store(client, **{"/keep.md": "kept\n"})
    command = (
        f"cd {MOUNT} && ln -s /etc/passwd link.md && mkfifo pipe && head -c 200000 /dev/zero | tr '\\0' a > big.md"
        " && printf '\\377\\376' > binary.md && echo changed > keep.md && echo ok > good.md"
    )
    marker = scripts.add(
        [
            _tool("bash", command=command),
            _tool("bash", command=f"ls -A {MOUNT}; cat {MOUNT}/keep.md"),
            _done(),
        ]
    )
    session = _session(client, _agent(client, marker), environment, store)
    results = _results(send_and_stream(client, session.id, [user_message("try")]))
    notes = results[0][1]
    for name, why in [
        ("link.md", "symbolic link"),
        ("pipe", "not a regular file"),
        ("big.md", "limit"),
        ("binary.md", "UTF-8"),
    ]:
        assert f"{MOUNT}/{name} was not saved" in notes and why in notes, (name, notes)
    assert _memories(client, store.id) == {"/keep.md": "changed\n", "/good.md": "ok\n"}
    assert results[1][1].split() == ["good.md", "keep.md", "changed"]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ([{"type": "memory_store", "memory_store_id": "memstore_missing"}], "not found"),
        ([{"type": "memory_store", "memory_store_id": "STORE"}] * 2, "given twice"),
        ([{"type": "memory_store", "memory_store_id": "STORE", "access": "all"}], "access"),
        ([{"type": "memory_store", "memory_store_id": "STORE", "instructions": "x" * 4097}], "instructions"),
    ],
)
def test_bad_attachments_are_refused(
    client: anthropic.Anthropic,
    environment: Any,
    scripts: Scripts,
    resources: list[dict[str, Any]],
    message: str,
) -> None:
    store = _store(client)
    agent = _agent(client, scripts.add([_done()]))
    filled = [{**r, "memory_store_id": store.id} if r["memory_store_id"] == "STORE" else r for r in resources]
    with pytest.raises(anthropic.BadRequestError, match=message):
        client.beta.sessions.create(agent=agent.id, environment_id=environment.id, resources=filled)  # type: ignore[arg-type]


def test_an_archived_store_cannot_be_attached_and_same_names_get_distinct_mounts(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    agent = _agent(client, scripts.add([_done()]))
    archived = _store(client, "Old")
    client.beta.memory_stores.archive(archived.id)
    with pytest.raises(anthropic.BadRequestError, match="archived"):
        _session(client, agent, environment, archived)
    a, b = _store(client, "Shared Notes!"), _store(client, "shared notes")
    session = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[{"type": "memory_store", "memory_store_id": s.id} for s in (a, b)],
    )
    assert [r.mount_path for r in session.resources] == [
        "/mnt/memory/shared-notes",
        "/mnt/memory/shared-notes-2",
    ]
