"""Custom tools: the tool runs in *your* process, not on the gateway or in a sandbox.

The agent declares a ``custom`` tool (a name, a description, a JSON schema). When the model
calls it, the session records ``agent.custom_tool_use`` and idles with ``requires_action``;
this client looks the order up in its own data and answers with ``user.custom_tool_result``,
and the model carries on with the answer.

    .venv/bin/python examples/custom_tools.py

What the model is asked to do: find out the status of orders A-1001 and A-1002 with the
``lookup_order`` tool and summarise them. The scripted model (no ``ANTHROPIC_API_KEY``) is
taught to call the tool once per order, then to report what it was told.
"""

from __future__ import annotations

import json
from typing import Any

from _common import MODEL, connect, describe, is_noise, teach, turn, user_message

MARKER = "Tether custom tools example."
SYSTEM = f"{MARKER} You answer questions about orders. Look every order up with lookup_order."
LOOKUP_ORDER: Any = {
    "type": "custom",
    "name": "lookup_order",
    "description": "Look an order up in the shop's database by its id; returns its status as JSON.",
    "input_schema": {
        "type": "object",
        "properties": {"order_id": {"type": "string", "description": "e.g. A-1001"}},
        "required": ["order_id"],
    },
}
SCRIPT: list[dict[str, Any]] = [
    {"content": [{"type": "tool_use", "name": "lookup_order", "input": {"order_id": "A-1001"}}]},
    {"content": [{"type": "tool_use", "name": "lookup_order", "input": {"order_id": "A-1002"}}]},
    {"content": [{"type": "text", "text": "A-1002: {{last_tool_result}}"}]},
]

# The client's own data: the gateway never sees it except through the results sent back.
ORDERS = {
    "A-1001": {"status": "shipped", "carrier": "DHL", "eta": "2026-12-03"},
    "A-1002": {"status": "held", "reason": "address check"},
}


def lookup_order(order_id: str) -> tuple[str, bool]:
    """The tool itself: (result text, is_error)."""
    order = ORDERS.get(order_id)
    if order is None:
        return f"no order {order_id!r}", True
    return json.dumps({"order_id": order_id, **order}), False


def answer(use: Any) -> dict[str, Any]:
    """The ``user.custom_tool_result`` for one ``agent.custom_tool_use``."""
    text, failed = lookup_order(str(use.input.get("order_id", "")))
    return {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": use.id,
        "content": [{"type": "text", "text": text}],
        "is_error": failed,
    }


def main() -> None:
    client = connect()
    teach(client, MARKER, SCRIPT)
    agent = client.beta.agents.create(name="order-desk", model=MODEL, system=SYSTEM, tools=[LOOKUP_ORDER])
    environment = client.beta.environments.create(name="custom-tools")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    outgoing: list[dict[str, Any]] = [user_message("What is the status of orders A-1001 and A-1002?")]
    while outgoing:
        sending, outgoing = outgoing, []
        for event in turn(client, session.id, sending):
            if not is_noise(event):
                print(describe(event), flush=True)
            if event.type == "agent.custom_tool_use":
                # Answered once this turn ends (the session idles with requires_action).
                outgoing.append(answer(event))
                print(f"  -> answered: {outgoing[-1]['content'][0]['text']}", flush=True)
    print(f"session {session.id}")


if __name__ == "__main__":
    main()
