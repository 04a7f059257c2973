"""Deployments: an agent on a schedule, each fire a new session with the same first message.

A deployment binds an agent version to an environment and the events every session starts
with; a cron schedule (five fields, an IANA time zone) fires it. This example creates one for
weekday mornings, fires it once now (``deployments.run``, allowed at any time, even while
paused) and prints that session's trail. The schedule keeps firing while the gateway runs:
pause it with ``client.beta.deployments.pause(id)`` or archive it to stop.

    .venv/bin/python examples/scheduled_report.py

Each fire is recorded as a run (``client.beta.deployment_runs.list(deployment_id=...)``):
the session it created, or why it could not (an archived agent, say; a failed scheduled fire
also pauses the deployment, with the reason in ``paused_reason``).
"""

from __future__ import annotations

from _common import MODEL, connect, describe, is_noise, teach, user_message

MARKER = "Tether scheduled report example."
SYSTEM = f"{MARKER} Every weekday morning you write a one-line status report for the team."
SCRIPT = [{"content": [{"type": "text", "text": "Status: all builds green, 2 reviews waiting."}]}]
SCHEDULE = {"type": "cron", "expression": "0 9 * * 1-5", "timezone": "Europe/London"}


def main() -> None:
    client = connect()
    teach(client, MARKER, SCRIPT)
    agent = client.beta.agents.create(name="morning-report", model=MODEL, system=SYSTEM)
    environment = client.beta.environments.create(name="reports")
    deployment = client.beta.deployments.create(
        name="weekday morning report",
        agent=agent.id,  # pins the agent's current version
        environment_id=environment.id,
        initial_events=[user_message("Write this morning's status report.")],  # type: ignore[list-item]
        schedule=SCHEDULE,  # type: ignore[arg-type]
    )
    assert deployment.schedule is not None
    print(f"deployment {deployment.id} ({deployment.schedule.expression}, {deployment.schedule.timezone})")
    for moment in deployment.schedule.upcoming_runs_at or []:
        print(f"  next fire {moment.isoformat()}")

    run = client.beta.deployments.run(deployment.id)
    print(f"run {run.id}: {run.trigger_context.type}")
    if run.session_id is None:
        raise SystemExit(f"the run created no session: {run.error}")
    # The session may already be running: print its first event, then stream from there on
    # (``Last-Event-ID`` replays everything after that event, so nothing is missed).
    first = client.beta.sessions.events.list(run.session_id, limit=1).data[0]
    print(describe(first), flush=True)
    following = {"Last-Event-ID": first.id}
    with client.beta.sessions.events.stream(run.session_id, extra_headers=following) as stream:
        for event in stream:
            if not is_noise(event):
                print(describe(event), flush=True)
            if event.type in ("session.status_idle", "session.status_terminated"):
                break
    print(f"session {run.session_id}")


if __name__ == "__main__":
    main()
