"""Memory stores and dreams: what sessions learn outlives them, and a dream tidies it up.

This example creates a memory store and runs two sessions on it. The first mounts it
read-write at ``/mnt/memory/team-lessons`` and writes a lesson there; the write is saved as a
memory version authored by that session when the tool call ends. The second mounts it
read-only and reads the lesson. A dream then reads both sessions' transcripts and the store,
and writes a reorganised copy into a new store (the input store is left as it was).

    .venv/bin/python examples/memory_and_dreams.py

With the scripted model (no ``ANTHROPIC_API_KEY``) each step is taught to the model first;
with a real model the same prompts drive it.
"""

from __future__ import annotations

import time
from typing import Any

from _common import MODEL, connect, describe, is_noise, teach, turn, user_message

MARKER = "Tether memory example."
DREAM_MARKER = "Tether dream example."
MOUNT = "/mnt/memory/team-lessons"
LESSON = "Builds are slow on one core: run make -j2.\n"
SUMMARY = "# Builds\n- Run make -j2: builds are slow on one core (learned in two sessions).\n"


def _tool(name: str, **arguments: Any) -> dict[str, Any]:
    return {"content": [{"type": "tool_use", "name": name, "input": arguments}]}


def _say(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def run(client: Any, session_id: str, text: str) -> None:
    for event in turn(client, session_id, [user_message(text)]):
        if not is_noise(event):
            print(describe(event), flush=True)


def main() -> None:
    client = connect()
    store = client.beta.memory_stores.create(name="Team lessons", description="What our sessions learned.")
    print(f"memory store {store.id}")
    agent = client.beta.agents.create(
        name="builder",
        model=MODEL,
        system=f"{MARKER} You build software and keep lessons in memory.",
        tools=[{"type": "agent_toolset_20260401"}],
    )
    environment = client.beta.environments.create(name="memory-example")
    attach = {"type": "memory_store", "memory_store_id": store.id}

    teach(client, MARKER, [_tool("write", file_path=f"{MOUNT}/builds.md", content=LESSON), _say("Noted.")])
    first = client.beta.sessions.create(
        agent=agent.id,
        environment_id=environment.id,
        resources=[{**attach, "instructions": "Record build lessons in builds.md."}],
    )
    run(client, first.id, "The build took 20 minutes again. Remember why.")
    for version in client.beta.memory_stores.memory_versions.list(store.id):
        print(f"version {version.id}: {version.operation} {version.path} by {version.created_by.type}")

    teach(client, MARKER, [_tool("read", file_path=f"{MOUNT}/builds.md"), _say("Run make -j2.")])
    second = client.beta.sessions.create(
        agent=agent.id, environment_id=environment.id, resources=[{**attach, "access": "read_only"}]
    )
    run(client, second.id, "How should I run the build?")

    dreamed = "/mnt/memory/team-lessons-dream"
    teach(
        client,
        DREAM_MARKER,
        [
            _tool("bash", command=f"cat /mnt/session/transcripts/*.md | grep -i make; ls {dreamed}"),
            _tool("write", file_path=f"{dreamed}/builds.md", content=SUMMARY),
            _say("Merged the build lessons."),
        ],
    )
    dream = client.beta.dreams.create(
        inputs=[
            {"type": "memory_store", "memory_store_id": store.id},
            {"type": "sessions", "session_ids": [first.id, second.id]},
        ],
        model=MODEL,
        instructions=f"{DREAM_MARKER} Keep only durable lessons.",
    )
    print(f"dream {dream.id} {dream.status}")
    while dream.status in ("pending", "running"):
        time.sleep(0.5)
        dream = client.beta.dreams.retrieve(dream.id)
    print(
        f"dream {dream.id} {dream.status} (session {dream.session_id}, {dream.usage.output_tokens} output tokens)"
    )
    if dream.error is not None:
        raise SystemExit(f"the dream failed: {dream.error.message}")
    output = dream.outputs[0].memory_store_id
    for memory in client.beta.memory_stores.memories.list(output, view="full"):
        if memory.type == "memory":
            print(f"{output} {memory.path}:\n{memory.content}")


if __name__ == "__main__":
    main()
