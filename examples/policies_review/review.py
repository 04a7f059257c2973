"""Policies with human review: an ``ask`` rule pauses the session until someone decides.

``policy.yaml`` (next to this file) makes every ``write``/``edit`` under
``/workspace/published`` an ``ask``. The gateway must load it at start:

    .venv/bin/tether gateway --port 8420 --data-dir .tether \\
        --policy examples/policies_review/policy.yaml
    .venv/bin/python examples/policies_review/review.py

A call the policy asks about is recorded (``agent.tool_use`` with ``evaluated_permission``
``ask``) and the session idles with ``stop_reason`` ``requires_action`` listing the calls'
event ids. This script is the reviewer: it approves publishing Markdown and denies anything
else with a ``user.tool_confirmation`` each, then prints the outcome of every call.

What the model is asked to do: draft a post in ``/workspace/drafts``, then publish it as
``/workspace/published/post.md`` together with a ``/workspace/published/deploy.sh`` script.
The scripted model (no ``ANTHROPIC_API_KEY``) is taught those three writes in one reply.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # examples/_common.py

from _common import MODEL, connect, describe, is_noise, teach, turn, user_message

MARKER = "Tether policies review example."
SYSTEM = (
    f"{MARKER} You write and publish posts. Drafts go in /workspace/drafts, releases in /workspace/published."
)
POST = "# Release notes\n\nSessions now pause for review before publishing.\n"
SCRIPT: list[dict[str, Any]] = [
    {
        "content": [
            {"type": "text", "text": "Drafting, then publishing the post and its deploy script."},
            {
                "type": "tool_use",
                "name": "write",
                "input": {"file_path": "/workspace/drafts/post.md", "content": POST},
            },
            {
                "type": "tool_use",
                "name": "write",
                "input": {"file_path": "/workspace/published/post.md", "content": POST},
            },
            {
                "type": "tool_use",
                "name": "write",
                "input": {
                    "file_path": "/workspace/published/deploy.sh",
                    "content": "#!/bin/sh\nrsync -a . prod:/srv\n",
                },
            },
        ]
    },
    {"content": [{"type": "text", "text": "Outcome of the last two writes:\n{{last_tool_result}}"}]},
]


def review(use: Any) -> dict[str, Any]:
    """The reviewer's decision for one pending call: publish Markdown, nothing else."""
    path = str(use.input.get("file_path", ""))
    if path.endswith(".md"):
        return {"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}
    return {
        "type": "user.tool_confirmation",
        "tool_use_id": use.id,
        "result": "deny",
        "deny_message": f"Only Markdown may be published; {path} was refused by the reviewer.",
    }


def main() -> None:
    client = connect()
    teach(client, MARKER, SCRIPT)
    agent = client.beta.agents.create(
        name="publisher", model=MODEL, system=SYSTEM, tools=[{"type": "agent_toolset_20260401"}]
    )
    environment = client.beta.environments.create(name="policies-review")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    uses: dict[str, Any] = {}
    outgoing: list[dict[str, Any]] = [user_message("Draft the release notes post, then publish it.")]
    while outgoing:
        sending, outgoing = outgoing, []
        for event in turn(client, session.id, sending):
            if not is_noise(event):
                print(describe(event), flush=True)
            if event.type == "agent.tool_use":
                uses[event.id] = event
                print(f"  permission: {event.evaluated_permission}", flush=True)
            if event.type == "session.status_idle" and event.stop_reason.type == "requires_action":
                for event_id in event.stop_reason.event_ids:
                    decision = review(uses[event_id])
                    outgoing.append(decision)
                    print(f"  review: {decision['result']} {uses[event_id].input['file_path']}", flush=True)
    print(f"session {session.id}")


if __name__ == "__main__":
    main()
