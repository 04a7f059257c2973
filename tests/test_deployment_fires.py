"""A deployment's cron schedule fires a real session in a running gateway, on the wall clock.

The scheduler's logic (once per cron time, paused, replicas, takeover after a crash) is
walked with a given clock in ``test_deployment_schedule``; this checks the loop is wired in:
a one-minute schedule fires within a minute of creation, records a ``schedule`` run, and the
session it starts answers through the scripted model.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anthropic

from tests.conftest import Scripts
from tests.support.self_hosted import eventually
from tests.support.sessions import user_message
from tests.test_deployments import (
    Deployment,
    Run,
    deploy,
    do,
    new_agent,
    raw_and_strict,
    strict_page,
    wait_for_reply,
)

EVERY_MINUTE = {"type": "cron", "expression": "* * * * *", "timezone": "Asia/Kolkata"}
"""Every minute, in a zone with a half-hour offset (minute boundaries are the same)."""
FIRE_BOUND = 60 + 15
"""The next minute boundary, plus room for a tick and a loaded machine."""


def test_a_minute_schedule_fires_a_session_that_answers(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "scheduled hello"}]}])
    created = deploy(
        client,
        new_agent(client, system=marker),
        environment.id,
        initial_events=[
            user_message("the nightly job"),
            {"type": "system.message", "content": [{"type": "text", "text": "Report in one line."}]},
        ],
        schedule=EVERY_MINUTE,
    )
    assert created.schedule is not None and created.schedule.upcoming_runs_at
    due = created.schedule.upcoming_runs_at[0]
    assert due - datetime.now(UTC) <= timedelta(minutes=1)

    def scheduled_runs() -> list[Run] | None:
        page = client.beta.deployment_runs.with_raw_response.list(
            deployment_id=created.id, trigger_type="schedule"
        )
        runs, _ = strict_page(Run, page)
        return runs or None

    [fired] = eventually(scheduled_runs, "the first scheduled fire", timeout=FIRE_BOUND)
    assert fired.trigger_context.type == "schedule"
    assert fired.trigger_context.scheduled_at == due  # the cron time, not when the tick ran
    assert fired.error is None and fired.session_id is not None

    events = wait_for_reply(client, fired.session_id)
    assert events[0]["content"] == [{"type": "text", "text": "the nightly job"}]
    assert events[1]["type"] == "system.message"  # appended with the message, before any turn
    [request] = scripts.requests_for(marker)
    assert [m["role"] for m in request["messages"]] == ["user", "system"]
    assert [e["content"] for e in events if e["type"] == "agent.message"] == [
        [{"type": "text", "text": "scheduled hello"}]
    ]
    after = do(client, "retrieve", created.id)
    assert after.schedule is not None and after.schedule.last_run_at == fired.created_at
    assert after.schedule.upcoming_runs_at and after.schedule.upcoming_runs_at[0] > due
    # Stop it here: the shared gateway should not keep firing it for the rest of the run.
    archived = raw_and_strict(Deployment, client.beta.deployments.with_raw_response.archive(created.id))[1]
    assert archived.archived_at is not None
