"""Dreams run end to end, through the official SDK: sessions' transcripts in, a reorganised store out.

A dream is a session running the gateway's dreaming agent on the dream's model: the tests'
scripted model reads the transcripts placed at ``/mnt/session/transcripts``, rewrites the
mounted output store, and ends its turn; the dream then completes with its session's usage,
the output store holds what was written (authored by the dream's session) and, with
``create_new``, the input store is untouched.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2
from anthropic.types.beta import BetaDream

from tests.conftest import Scripts
from tests.support import restarts
from tests.support.processes import ServerProcess
from tests.support.restarts import sdk_client
from tests.support.self_hosted import eventually
from tests.support.sessions import send_and_stream, user_message

MODEL = "claude-sonnet-4-6"
database_url = restarts.database_url
launch = restarts.launch


def _tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": name, "input": arguments}]}


def _source_session(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, said: str, answer: str
) -> str:
    marker = scripts.add([{"content": [{"type": "text", "text": answer}]}])
    agent = client.beta.agents.create(name="worker", model=MODEL, system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="ops work")
    send_and_stream(client, session.id, [user_message(said)])
    return session.id


def _inputs(store_id: str, sources: list[str]) -> Any:
    return [
        {"type": "memory_store", "memory_store_id": store_id},
        {"type": "sessions", "session_ids": sources},
    ]


def _memories(client: anthropic.Anthropic, store_id: str) -> dict[str, str]:
    listed = client.beta.memory_stores.memories.list(store_id, view="full")
    return {m.path: m.content for m in listed if m.type == "memory"}


def _final(client: anthropic.Anthropic, dream_id: str) -> Any:
    def done() -> Any:
        raw = client.get(f"/v1/dreams/{dream_id}", cast_to=object)
        BetaDream.model_validate(raw)
        return raw if raw["status"] in ("completed", "failed", "canceled") else None

    return BetaDream.model_validate(eventually(done, "the dream to end", timeout=60))


def _dream_script(mount: str, sources: list[str]) -> list[dict[str, Any]]:
    facts = "# Deploying\n- the deploy key is in vault ops\n- builds need make -j2\n"
    return [
        _tool("read", file_path=f"/mnt/session/transcripts/{sources[0]}.md"),
        _tool("bash", command=f"cat /mnt/session/transcripts/{sources[1]}.md; ls {mount}"),
        _tool("write", file_path=f"{mount}/deploying.md", content=facts),
        _tool("bash", command=f"rm {mount}/old.md"),
        {"content": [{"type": "text", "text": "Merged deploy notes; removed the outdated file."}]},
    ]


def test_a_dream_reads_the_sessions_and_writes_a_new_store_leaving_the_input_alone(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    sources = [
        _source_session(client, environment, scripts, "Where is the deploy key?", "In vault ops."),
        _source_session(client, environment, scripts, "Why is the build slow?", "Use make -j2."),
    ]
    store = client.beta.memory_stores.create(name="Ops")
    client.beta.memory_stores.memories.create(store.id, path="/old.md", content="deploy by ssh\n")
    marker = scripts.add(_dream_script("/mnt/memory/ops-dream", sources))

    dream = client.beta.dreams.create(
        inputs=_inputs(store.id, sources),
        model=MODEL,
        instructions=f"Focus on deployment. {marker}",
    )
    ended = _final(client, dream.id)
    assert ended.status == "completed", ended.error
    assert ended.usage.output_tokens > 0 and ended.ended_at is not None
    output = ended.outputs[0].memory_store_id
    assert output != store.id
    assert client.beta.memory_stores.retrieve(output).name == "Ops (dream)"
    assert _memories(client, output) == {
        "/deploying.md": "# Deploying\n- the deploy key is in vault ops\n- builds need make -j2\n"
    }
    assert _memories(client, store.id) == {"/old.md": "deploy by ssh\n"}
    authors = {
        v.created_by.model_dump().get("session_id")
        for v in client.beta.memory_stores.memory_versions.list(output)
    }
    assert authors == {ended.session_id}

    # The dream's session is an ordinary session: its log shows what the dream read.
    events = list(client.beta.sessions.events.list(ended.session_id))
    results = [
        "".join(b.text for b in e.content if b.type == "text")
        for e in events
        if e.type == "agent.tool_result"
    ]
    assert "Where is the deploy key?" in results[0] and "In vault ops." in results[0]
    assert "Use make -j2." in results[1] and "old.md" in results[1]
    requests = scripts.requests_for(marker)
    assert "Focus on deployment." in str(
        requests[0]["system"]
    ) and "Ops (dream) at /mnt/memory/ops-dream" in str(requests[0]["system"])


def test_update_existing_rewrites_the_input_store_in_place(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    sources = [
        _source_session(client, environment, scripts, "deploy key?", "In vault ops."),
        _source_session(client, environment, scripts, "slow build?", "make -j2"),
    ]
    store = client.beta.memory_stores.create(name="Ops live")
    client.beta.memory_stores.memories.create(store.id, path="/old.md", content="deploy by ssh\n")
    marker = scripts.add(_dream_script("/mnt/memory/ops-live", sources))
    dream = client.beta.dreams.create(
        inputs=_inputs(store.id, sources),
        model={"id": MODEL},
        instructions=marker,
        output_behavior={"type": "update_existing", "memory_store_id": store.id},
    )
    ended = _final(client, dream.id)
    assert ended.status == "completed" and ended.outputs[0].memory_store_id == store.id
    assert list(_memories(client, store.id)) == ["/deploying.md"]


def test_a_canceled_dream_stops_its_session_and_keeps_what_it_wrote(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, model_server: Any
) -> None:
    sources = [_source_session(client, environment, scripts, "hello", "hi")]
    store = client.beta.memory_stores.create(name="Ops held")
    gate = f"dream-{store.id}"
    marker = scripts.add(
        [
            _tool("write", file_path="/mnt/memory/ops-held-dream/first.md", content="kept\n"),
            {"hold": gate, "content": [{"type": "text", "text": "never sent"}]},
        ]
    )
    dream = client.beta.dreams.create(
        inputs=_inputs(store.id, sources),
        model=MODEL,
        instructions=marker,
    )
    arrived = httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", timeout=40)
    assert arrived.status_code == 204, "the dream's second model call never arrived"
    canceled = client.beta.dreams.cancel(dream.id)
    assert canceled.status == "canceled" and canceled.ended_at is not None
    httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()
    session_id = canceled.session_id
    assert session_id is not None
    eventually(
        lambda: client.beta.sessions.retrieve(session_id).status == "idle" or None, "the session to stop"
    )
    assert _memories(client, canceled.outputs[0].memory_store_id) == {"/first.md": "kept\n"}
    assert client.beta.dreams.retrieve(dream.id).status == "canceled"


def test_a_dream_survives_a_kill_of_its_gateway_and_completes_after_the_restart(
    launch: Callable[[], ServerProcess], api_key: str, model_server: ServerProcess, scripts: Scripts
) -> None:
    """Killed while the dream's model call is held: the restarted gateway resumes its session
    (the lease runs out) and the dream ends ``completed`` with what it wrote before and after."""
    gate = "dream-kill-" + secrets.token_hex(6)
    first = launch()
    client = sdk_client(first, api_key)
    environment = client.beta.environments.create(name="e")
    sources = [_source_session(client, environment, scripts, "deploy key?", "In vault ops.")]
    store = client.beta.memory_stores.create(name="Ops crash")
    mount = "/mnt/memory/ops-crash-dream"
    marker = scripts.add(
        [
            _tool("write", file_path=f"{mount}/before.md", content="before the kill\n"),
            {"hold": gate, **_tool("write", file_path=f"{mount}/after.md", content="after the restart\n")},
            {"content": [{"type": "text", "text": "done"}]},
        ]
    )
    dream = client.beta.dreams.create(
        inputs=_inputs(store.id, sources),
        model=MODEL,
        instructions=marker,
    )
    arrived = httpx2.get(f"{model_server.url}/_gates/{gate}/arrived", timeout=40)
    assert arrived.status_code == 204, "the dream's second model call never arrived"
    os.kill(first.process.pid, signal.SIGKILL)
    first.process.wait()
    httpx2.post(f"{model_server.url}/_gates/{gate}/open").raise_for_status()  # the held call is lost

    client = sdk_client(launch(), api_key)
    ended = _final(client, dream.id)
    assert ended.status == "completed", ended.error
    assert _memories(client, ended.outputs[0].memory_store_id) == {
        "/before.md": "before the kill\n",
        "/after.md": "after the restart\n",
    }
