"""Quickstart: the official ``anthropic`` SDK against a Tether gateway.

Creates an agent with the agent toolset (``bash``, ``read``, ``write``… run in the session's
sandbox) and an environment, opens a session, streams its events while sending one message,
and prints the trail until the session is idle.

    .venv/bin/tether gateway --port 8420 --data-dir .tether      # in another terminal
    .venv/bin/python examples/quickstart.py

What the model is asked to do: write a short haiku to ``/workspace/haiku.txt`` and read it
back. Claude decides how; the scripted model (no ``ANTHROPIC_API_KEY``) is taught the same two
tool calls. Prints the session id last.
"""

from __future__ import annotations

from typing import Any

from _common import MODEL, connect, describe, is_noise, teach, turn, user_message

MARKER = "Tether quickstart example."
SYSTEM = f"{MARKER} You are a careful engineer working in /workspace. Use the tools to do what is asked."
SCRIPT: list[dict[str, Any]] = [
    {
        "content": [
            {"type": "text", "text": "Writing the haiku."},
            {
                "type": "tool_use",
                "name": "write",
                "input": {
                    "file_path": "/workspace/haiku.txt",
                    "content": "Events in a log,\nthe harness forgets, then reads:\nnothing lost at all.\n",
                },
            },
        ]
    },
    {"content": [{"type": "tool_use", "name": "read", "input": {"file_path": "/workspace/haiku.txt"}}]},
    {"content": [{"type": "text", "text": "Done. The file reads:\n{{last_tool_result}}"}]},
]


def main() -> None:
    client = connect()
    teach(client, MARKER, SCRIPT)
    agent = client.beta.agents.create(
        name="quickstart", model=MODEL, system=SYSTEM, tools=[{"type": "agent_toolset_20260401"}]
    )
    environment = client.beta.environments.create(name="quickstart")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    ask = "Write a haiku about append-only logs to /workspace/haiku.txt, then read the file back."
    for event in turn(client, session.id, [user_message(ask)]):
        if not is_noise(event):
            print(describe(event), flush=True)
    print(f"session {session.id}")


if __name__ == "__main__":
    main()
