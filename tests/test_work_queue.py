"""The self-hosted work queue through the SDK's ``client.beta.environments.work``."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from anthropic.types.beta.environments import BetaSelfHostedWork


@pytest.fixture
def self_hosted(client: anthropic.Anthropic) -> Any:
    return client.beta.environments.create(name="on-prem", config={"type": "self_hosted"})


def _session(client: anthropic.Anthropic, environment_id: str) -> Any:
    agent = client.beta.agents.create(name="on-prem-agent", model="m")
    return client.beta.sessions.create(agent=agent.id, environment_id=environment_id)


def test_a_self_hosted_session_is_queued_claimed_acknowledged_and_heartbeated(
    client: anthropic.Anthropic, self_hosted: Any
) -> None:
    work = client.beta.environments.work
    session = _session(client, self_hosted.id)
    assert work.stats(self_hosted.id).depth == 1

    raw = work.with_raw_response.poll(self_hosted.id, anthropic_worker_id="w1").http_response.json()
    item = BetaSelfHostedWork.model_validate(raw)
    assert item.data.id == session.id and item.state == "queued"
    # Invisible to a second poller while the first decides (reclaim window).
    assert work.poll(self_hosted.id, anthropic_worker_id="w2") is None

    acked = work.ack(item.id, environment_id=self_hosted.id)
    assert acked.state == "starting" and acked.acknowledged_at is not None
    stats = work.stats(self_hosted.id)
    assert (stats.depth, stats.pending, stats.workers_polling) == (0, 1, 2)

    first = work.heartbeat(item.id, environment_id=self_hosted.id, expected_last_heartbeat="NO_HEARTBEAT")
    assert first.lease_extended and first.state == "active"
    second = work.heartbeat(
        item.id,
        environment_id=self_hosted.id,
        expected_last_heartbeat=first.last_heartbeat,
        desired_ttl_seconds=60,
    )
    assert second.ttl_seconds == 60 and second.last_heartbeat >= first.last_heartbeat

    with pytest.raises(anthropic.PreconditionFailedError) as refused:
        work.heartbeat(item.id, environment_id=self_hosted.id, expected_last_heartbeat="NO_HEARTBEAT")
    error = refused.value.body["error"]  # type: ignore[index]
    assert error["error_code"] == "heartbeat_precondition_failed"
    assert error["details"]["current_state"]["last_heartbeat"] == second.last_heartbeat

    stopping = work.stop(item.id, environment_id=self_hosted.id)
    assert stopping.state == "stopping"
    after = work.heartbeat(item.id, environment_id=self_hosted.id, expected_last_heartbeat="anything")
    assert after.state == "stopping" and not after.lease_extended
    assert work.stop(item.id, environment_id=self_hosted.id, force=True).state == "stopped"


def test_an_unacknowledged_item_is_reclaimed_and_poll_can_block(
    client: anthropic.Anthropic, self_hosted: Any
) -> None:
    work = client.beta.environments.work
    assert work.poll(self_hosted.id, block_ms=50) is None
    _session(client, self_hosted.id)
    first = work.poll(self_hosted.id, reclaim_older_than_ms=0)
    assert first is not None
    again = work.poll(self_hosted.id, reclaim_older_than_ms=0)
    assert again is not None and again.id == first.id


def test_work_metadata_merges_and_listing_and_retrieval_work(
    client: anthropic.Anthropic, self_hosted: Any
) -> None:
    work = client.beta.environments.work
    _session(client, self_hosted.id)
    [item] = list(work.list(self_hosted.id))
    updated = work.update(item.id, environment_id=self_hosted.id, metadata={"host": "rack-7", "x": "1"})
    updated = work.update(item.id, environment_id=self_hosted.id, metadata={"x": None})
    assert updated.metadata == {"host": "rack-7"}
    assert work.retrieve(item.id, environment_id=self_hosted.id).metadata == {"host": "rack-7"}
    with pytest.raises(anthropic.NotFoundError):
        work.retrieve(item.id, environment_id=client.beta.environments.create(name="other").id)
    with pytest.raises(anthropic.BadRequestError):
        work.poll(self_hosted.id, block_ms=5000)
