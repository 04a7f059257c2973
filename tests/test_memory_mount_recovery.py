"""Mounted memory stores when another writer races the session, and when the gateway is killed.

Around each sandbox tool call the gateway syncs ``/mnt/memory/<slug>`` with its store
(``gateway.tools.memory_sync``): a change the session made is written back only if the store
still holds what the session started from, so a change made meanwhile through the API wins and
the model is told; what the API changed between two calls is in the mount for the next one. The
versions are written before the tool's result is logged, so a gateway killed after the call
loses nothing; one killed during the call leaves the change in the mount (the sandbox keeps the
base it started from), and the resumed session's next sync saves it.

"During the call" needs no sleeps: the command writes the mount, creates ``READY`` in its
workspace, and waits (at most a minute) until the test creates ``GO`` there; "after the call"
is a scripted model turn held at a gate (``gateway.scripted_model.gates``).
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.conftest import Scripts, gateway_workspaces
from tests.support import restarts
from tests.support.processes import ServerProcess
from tests.support.restarts import sdk_client
from tests.support.self_hosted import eventually
from tests.support.sessions import user_message
from tests.test_memory_mounts import MOUNT, _agent, _done, _memories, _results, _session, _store, _tool

# Gateways started one after another on one database and data dir, on each backend.
database_url = restarts.database_url
launch = restarts.launch

PATH = "/lessons.md"
FIRST = "from the start\n"
FROM_API = "from the api\n"
READY, GO = ".memory-test-ready", ".memory-test-go"
"""Files in the session's workspace: the command says it wrote the mount, the test lets it end."""


def _write_then_wait(text: str) -> str:
    """A command that writes ``text`` (one line) to the memory, says so, and waits for ``GO``."""
    waiting = f"for _ in $(seq 1200); do [ -e /workspace/{GO} ] && break; sleep 0.05; done"
    return f"echo '{text}' > {MOUNT}{PATH} && touch /workspace/{READY} && {waiting}"


def _cat() -> dict[str, Any]:
    return _tool("bash", command=f"cat {MOUNT}{PATH} 2>/dev/null || echo '(absent)'")


def _await_ready(workspace: Path) -> None:
    eventually(lambda: (workspace / READY).exists(), "the command to write the mount", timeout=60)


def _stream_until_idle(
    client: anthropic.Anthropic, session_id: str, act: Callable[[], None], after: str | None = None
) -> list[Any]:
    """Open the session's stream (from after event ``after``), ``act``, collect until it idles."""
    headers = {"Last-Event-ID": after} if after else {}
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id, extra_headers=headers) as stream:
        act()
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle":
                return seen
    raise AssertionError("the stream ended before the session went idle")


def _sender(client: anthropic.Anthropic, session_id: str) -> Callable[[], None]:
    def send() -> None:
        client.beta.sessions.events.send(session_id, events=[user_message("go")])  # type: ignore[list-item]

    return send


def _by_session(client: anthropic.Anthropic, store_id: str, session_id: str) -> list[Any]:
    """The store's versions whose author is the session, read from the whole history."""
    return [
        v
        for v in client.beta.memory_stores.memory_versions.list(store_id, view="full")
        if v.created_by is not None
        and v.created_by.type == "session_actor"
        and v.created_by.session_id == session_id
    ]


def _change_from_the_api(client: anthropic.Anthropic, store_id: str, how: str) -> None:
    if how == "created":
        client.beta.memory_stores.memories.create(store_id, path=PATH, content=FROM_API)
        return
    listed = client.beta.memory_stores.memories.list(store_id)
    memory = next(m for m in listed if m.type == "memory" and m.path == PATH)
    if how == "modified":
        client.beta.memory_stores.memories.update(memory.id, memory_store_id=store_id, content=FROM_API)
    else:
        client.beta.memory_stores.memories.delete(memory.id, memory_store_id=store_id)


def _gate_arrived(model_server: ServerProcess, gate: str) -> None:
    arrived = httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", params={"timeout": 60}, timeout=70)
    assert arrived.status_code == 204, "the model was never asked for the held turn"


def _open_gate(model_server: ServerProcess, gate: str) -> None:
    httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()


def _last_event_id(client: anthropic.Anthropic, session_id: str) -> str:
    return client.beta.sessions.events.list(session_id, limit=1, order="desc").data[0].id


def _kill(server: ServerProcess) -> None:
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()


# Two writers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "stored", "shown", "now"),
    [
        ("modified", {PATH: FROM_API}, FROM_API, "the file now holds the store's version"),
        ("created", {PATH: FROM_API}, FROM_API, "the file now holds the store's version"),
        ("deleted", {}, "(absent)\n", "the file was removed from the mount"),
    ],
)
def test_a_change_the_api_made_during_the_tool_call_wins_and_the_model_is_told(
    client: anthropic.Anthropic,
    gateway: ServerProcess,
    environment: Any,
    scripts: Scripts,
    how: str,
    stored: dict[str, str],
    shown: str,
    now: str,
) -> None:
    """The API ``how``s the memory while the session's command has its own change in the mount."""
    store = _store(client) if how == "created" else _store(client, **{PATH: FIRST})
    before = _memories(client, store.id)
    marker = scripts.add([_tool("bash", command=_write_then_wait("from the session")), _cat(), _done()])
    session = _session(client, _agent(client, marker), environment, store)
    workspace = gateway_workspaces(gateway) / session.id

    def race() -> None:
        _sender(client, session.id)()
        _await_ready(workspace)
        assert _memories(client, store.id) == before, "saved before the call ended"
        _change_from_the_api(client, store.id, how)
        (workspace / GO).touch()

    results = _results(_stream_until_idle(client, session.id, race))

    note = f"[memory] {MOUNT}{PATH} was not saved: another session changed this memory first; {now}."
    assert note in results[0][1], results[0]
    assert results[1] == (False, shown), "the mount shows the store's version to the next call"
    assert _memories(client, store.id) == stored
    assert _by_session(client, store.id, session.id) == []
    assert not list(client.beta.memory_stores.memory_versions.list(store.id, session_id=session.id))


def test_what_the_api_changed_between_two_tool_calls_is_in_the_mount_for_the_next(
    client: anthropic.Anthropic, model_server: ServerProcess, environment: Any, scripts: Scripts
) -> None:
    gate = "memory-between-" + secrets.token_hex(6)
    store = _store(client, **{PATH: FIRST})
    marker = scripts.add([_cat(), {**_cat(), "hold": gate}, _done()])
    session = _session(client, _agent(client, marker), environment, store)

    def between() -> None:
        _sender(client, session.id)()
        _gate_arrived(model_server, gate)  # the first call has ended and been synced
        _change_from_the_api(client, store.id, "modified")
        _open_gate(model_server, gate)

    results = _results(_stream_until_idle(client, session.id, between))

    assert results == [(False, FIRST), (False, FROM_API)]
    last_request = scripts.requests_for(marker)[-1]
    seen = last_request["messages"][-1]["content"][0]
    assert seen["content"] == [{"type": "text", "text": FROM_API}], "the model saw the store's version"
    assert _memories(client, store.id) == {PATH: FROM_API}
    assert _by_session(client, store.id, session.id) == []


# Crashes --------------------------------------------------------------------------------


def test_a_memory_written_by_a_finished_tool_call_survives_a_kill_and_the_session_reads_it(
    launch: Callable[[], ServerProcess], api_key: str, model_server: ServerProcess, scripts: Scripts
) -> None:
    gate = "memory-after-" + secrets.token_hex(6)
    saved = "saved before the kill\n"
    marker = scripts.add(
        [_tool("bash", command=f"echo '{saved.strip()}' > {MOUNT}{PATH}"), {**_cat(), "hold": gate}, _done()]
    )
    first = launch()
    client = sdk_client(first, api_key)
    store = _store(client, **{PATH: FIRST})
    environment = client.beta.environments.create(name="e")
    session = _session(client, _agent(client, marker), environment, store)
    _sender(client, session.id)()
    _gate_arrived(model_server, gate)  # the call's result is logged: the model is asked what next
    after = _last_event_id(client, session.id)
    _kill(first)

    client = sdk_client(launch(), api_key)
    # Before the session makes another call: the version was written with the call's result.
    assert _memories(client, store.id) == {PATH: saved}
    written = [(v.operation, v.path, v.content) for v in _by_session(client, store.id, session.id)]
    assert written == [("modified", PATH, saved)]

    events = _stream_until_idle(client, session.id, lambda: _open_gate(model_server, gate), after)

    assert events[0].type == "session.status_rescheduled"
    assert _results(events) == [(False, saved)], "the mount holds it, and nothing is reported unsaved"
    assert events[-1].stop_reason.type == "end_turn"
    again = [(v.operation, v.path, v.content) for v in _by_session(client, store.id, session.id)]
    assert again == written, "saved once, not again after the restart"


def test_a_memory_changed_by_a_tool_call_the_kill_interrupted_is_saved_by_the_resumed_session(
    launch: Callable[[], ServerProcess], api_key: str, scripts: Scripts, tmp_path: Path
) -> None:
    written = "written as the gateway died"
    marker = scripts.add([_tool("bash", command=_write_then_wait(written)), _cat(), _done()])
    first = launch()
    client = sdk_client(first, api_key)
    store = _store(client, **{PATH: FIRST})
    environment = client.beta.environments.create(name="e")
    session = _session(client, _agent(client, marker), environment, store)
    _sender(client, session.id)()
    # ``launch`` gives every gateway the data dir tmp_path/data.
    _await_ready(first.view(tmp_path / "data" / "workspaces") / session.id)
    assert _memories(client, store.id) == {PATH: FIRST}, "premise: the change is only in the mount"
    after = _last_event_id(client, session.id)
    _kill(first)

    client = sdk_client(launch(), api_key)
    events = _stream_until_idle(client, session.id, lambda: None, after)

    results = _results(events)
    assert results[0][0] and "interrupted by a gateway restart" in results[0][1], results[0]
    assert results[1] == (False, written + "\n"), "the mount kept the change, and it was saved"
    assert _memories(client, store.id) == {PATH: written + "\n"}
    saved = [(v.operation, v.path, v.content) for v in _by_session(client, store.id, session.id)]
    assert saved == [("modified", PATH, written + "\n")]
