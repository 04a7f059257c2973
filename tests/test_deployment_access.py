"""Who may change and fire a deployment: a deployment holding vaults lends them to every session
it fires, so only an admin key may change it or resume its fires (as only an admin may attach a
vault to a session); a key limited to some agents acts on their deployments only; and a
deployment names an agent version exactly when it names the agent as an object.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.support.processes import ServerProcess
from tests.test_deployments import deploy, new_agent, unique

KEYS = "/v1/organizations/api_keys"


@pytest.fixture
def key_for(gateway: ServerProcess, api_key: str) -> Iterator[Any]:
    """``key_for(role, **fields)``: an SDK client using a new key of that role."""
    clients: list[anthropic.Anthropic] = []

    def make(role: str, **fields: Any) -> anthropic.Anthropic:
        created = httpx2.post(
            gateway.url + KEYS,
            headers={"x-api-key": api_key},
            json={"name": unique(role), "role": role, **fields},
            timeout=30,
        )
        assert created.status_code == 200, created.text
        clients.append(
            anthropic.Anthropic(base_url=gateway.url, api_key=created.json()["key"], max_retries=0)
        )
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def _forbidden(call: Any) -> str:
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        call()
    return refused.value.message


def test_a_developer_cannot_redirect_or_resume_a_deployment_that_holds_vaults(
    client: anthropic.Anthropic, environment: Any, key_for: Any
) -> None:
    vault = client.beta.vaults.create(display_name=unique("vault"))
    with_vault = deploy(client, new_agent(client), environment.id, vault_ids=[vault.id])
    developer = key_for("developer")
    own_agent = new_agent(developer)
    before = client.beta.deployments.retrieve(with_vault.id)

    assert "vault" in _forbidden(
        lambda: developer.beta.deployments.update(
            with_vault.id,
            agent=own_agent,
            initial_events=[{"type": "user.message", "content": [{"type": "text", "text": "leak it"}]}],
            schedule={"type": "cron", "expression": "* * * * *", "timezone": "UTC"},
        )
    )
    client.beta.deployments.pause(with_vault.id)
    _forbidden(lambda: developer.beta.deployments.unpause(with_vault.id))
    _forbidden(lambda: developer.beta.deployments.run(with_vault.id))
    after = client.beta.deployments.retrieve(with_vault.id)
    assert (after.agent, after.initial_events, after.schedule) == (before.agent, before.initial_events, None)
    assert after.status == "paused"

    # Dropping the vaults is allowed (it lends nothing), and then the deployment is the developer's to change.
    dropped = developer.beta.deployments.update(with_vault.id, vault_ids=[], name="no vaults")
    assert dropped.vault_ids == [] and developer.beta.deployments.unpause(with_vault.id).status == "active"
    # A deployment without vaults is a developer's to build and run.
    mine = developer.beta.deployments.create(
        name=unique("dev"),
        agent=own_agent,
        environment_id=environment.id,
        initial_events=[{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}],
    )
    assert developer.beta.deployments.run(mine.id).error is None


def test_a_key_limited_to_some_agents_acts_on_their_deployments_only(
    client: anthropic.Anthropic, environment: Any, key_for: Any
) -> None:
    theirs = deploy(client, new_agent(client), environment.id)
    own_agent = new_agent(client)
    limited = key_for("developer", agent_ids=[own_agent])

    for action in ("pause", "unpause", "archive", "run"):
        _forbidden(lambda action=action: getattr(limited.beta.deployments, action)(theirs.id))
    _forbidden(lambda: limited.beta.deployments.update(theirs.id, name="mine now"))
    _forbidden(lambda: limited.beta.deployments.update(theirs.id, agent=own_agent))
    assert client.beta.deployments.retrieve(theirs.id).archived_at is None

    mine = deploy(client, own_agent, environment.id)
    assert limited.beta.deployments.pause(mine.id).status == "paused"
    _forbidden(lambda: limited.beta.deployments.update(mine.id, agent=theirs.agent.id))


def test_an_agent_object_must_name_its_version(client: anthropic.Anthropic, environment: Any) -> None:
    agent_id = new_agent(client)
    with pytest.raises(anthropic.BadRequestError, match="version"):
        client.beta.deployments.create(
            name=unique("no-version"),
            agent={"type": "agent", "id": agent_id},  # type: ignore[typeddict-item]
            environment_id=environment.id,
            initial_events=[{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}],
        )
