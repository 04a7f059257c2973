"""The official TypeScript SDK (``@anthropic-ai/sdk``) drives the same gateway as the Python one.

``tests/ts_client/flow.mjs`` runs under Node.js with the pinned SDK: it creates an agent, an
environment and a session, streams a turn while sending a message, pages through the events,
meets a 404, a 400 and a 401 as the SDK's own error classes, creates a scheduled deployment and
runs it, and archives a vault. What it saw is checked here against the gateway, through the
Python SDK.
"""

from __future__ import annotations

import anthropic

from tests.conftest import Scripts
from tests.support import ts_client
from tests.support.processes import ServerProcess
from tests.support.self_hosted import eventually


def test_the_typescript_sdk_runs_a_session_a_deployment_and_meets_errors(
    gateway: ServerProcess, api_key: str, client: anthropic.Anthropic, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "hello back, typescript"}]}])

    seen = ts_client.run_script(
        "flow.mjs", {"TETHER_URL": gateway.url, "TETHER_API_KEY": api_key, "TETHER_MARKER": marker}
    )

    session_id = seen["session"]["id"]
    assert seen["session"]["status"] == "idle" and seen["session"]["agentVersion"] == 1
    assert seen["sentTypes"] == ["user.message"]
    streamed = [event["type"] for event in seen["streamed"]]
    assert streamed[0] == "user.message" and streamed[-1] == "session.status_idle"
    assert {"type": "agent.message", "text": "hello back, typescript"} in seen["streamed"]
    assert seen["stopReason"] == "end_turn"

    logged = [event.type for event in client.beta.sessions.events.list(session_id, limit=100).data]
    assert seen["listed"] == logged  # auto-pagination with pages of two saw every event once
    assert seen["retrieved"] == "idle"

    assert seen["notFound"] == {"name": "NotFoundError", "status": 404, "type": "not_found_error"}
    assert seen["badRequest"] == {"name": "BadRequestError", "status": 400, "type": "invalid_request_error"}
    assert seen["unauthorized"] == {
        "name": "AuthenticationError",
        "status": 401,
        "type": "authentication_error",
    }

    deployment = client.beta.deployments.retrieve(seen["deployment"]["id"])
    assert seen["deployment"]["agent"] == {"type": "agent", "id": deployment.agent.id, "version": 1}
    assert deployment.schedule is not None and len(seen["deployment"]["upcoming"]) == 5
    assert seen["badSchedule"] == {"name": "BadRequestError", "status": 400, "type": "invalid_request_error"}
    assert deployment.schedule.expression == "30 4 29 2 *"  # the refused update changed nothing
    run = seen["run"]
    assert run["trigger"] == "manual" and run["error"] is None and seen["runs"] == [run["id"]]
    eventually(
        lambda: (
            client.beta.sessions.retrieve(run["sessionId"]).status == "idle"
            and any(
                e.type == "agent.message" for e in client.beta.sessions.events.list(run["sessionId"]).data
            )
        ),
        "the deployment's session to answer",
        timeout=30,
    )

    assert (seen["budget"], seen["raised"]) == ("500", "900")
    # The turn was costed (what the stream showed of it, should it not have been).
    assert seen["listCost"] is not None and int(seen["listCost"]) > 0, seen["secondTurn"]
    assert seen["outcomeId"].startswith("outc_")
    eventually(
        lambda: (
            (entries := client.beta.sessions.retrieve(seen["outcomeSession"]).outcome_evaluations)
            and entries[0].outcome_id == seen["outcomeId"]
            and entries[0].completed_at is not None
        ),
        "the outcome defined through the TypeScript SDK to be graded",
        timeout=30,
    )

    assert seen["vault"]["archived"] is True
    assert client.beta.vaults.retrieve(seen["vault"]["id"]).archived_at is not None
