"""Agents, environments, sessions and the event log, driven through the official ``anthropic`` SDK.

The SDK's normal parsing is lenient (it constructs models without validating), so every
response here is also validated strictly from its raw JSON: a missing required field or a
wrongly shaped value fails the test instead of silently becoming ``None``.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import anthropic
import pytest
from anthropic.types.beta import (
    BetaEnvironment,
    BetaEnvironmentDeleteResponse,
    BetaManagedAgentsAgent,
    BetaManagedAgentsAgentToolset20260401,
    BetaManagedAgentsCustomTool,
    BetaManagedAgentsDeletedSession,
    BetaManagedAgentsMCPToolset,
    BetaManagedAgentsSession,
)
from pydantic import BaseModel

from tests.conftest import Scripts
from tests.support.sessions import strictly_valid, user_message

M = TypeVar("M", bound=BaseModel)

MODEL = "claude-scripted"
AGENT_TOOLSET = "agent_toolset_20260401"


def strict(model: type[M], response: Any) -> M:
    """Validate the raw JSON of a ``with_raw_response`` call against the SDK model."""
    return model.model_validate(response.http_response.json())


def strict_page(model: type[M], response: Any) -> tuple[list[M], str | None]:
    """A raw list page: every item validated, plus the ``next_page`` cursor (which must be present)."""
    body = response.http_response.json()
    assert set(body) >= {"data", "next_page"}
    return [model.model_validate(item) for item in body["data"]], body["next_page"]


def create_agent(client: anthropic.Anthropic, **params: Any) -> BetaManagedAgentsAgent:
    params.setdefault("name", "agent")
    params.setdefault("model", MODEL)
    return strict(BetaManagedAgentsAgent, client.beta.agents.with_raw_response.create(**params))


def update_agent(client: anthropic.Anthropic, agent_id: str, **params: Any) -> BetaManagedAgentsAgent:
    return strict(BetaManagedAgentsAgent, client.beta.agents.with_raw_response.update(agent_id, **params))


def retrieve_agent(client: anthropic.Anthropic, agent_id: str, **params: Any) -> BetaManagedAgentsAgent:
    return strict(BetaManagedAgentsAgent, client.beta.agents.with_raw_response.retrieve(agent_id, **params))


def create_environment(client: anthropic.Anthropic, **params: Any) -> BetaEnvironment:
    params.setdefault("name", "env")
    return strict(BetaEnvironment, client.beta.environments.with_raw_response.create(**params))


def create_session(client: anthropic.Anthropic, **params: Any) -> BetaManagedAgentsSession:
    return strict(BetaManagedAgentsSession, client.beta.sessions.with_raw_response.create(**params))


def retrieve_session(client: anthropic.Anthropic, session_id: str) -> BetaManagedAgentsSession:
    return strict(BetaManagedAgentsSession, client.beta.sessions.with_raw_response.retrieve(session_id))


def raw_events(client: anthropic.Anthropic, session_id: str, **params: Any) -> list[dict[str, Any]]:
    """Every event of the session (one page of up to 1000), as raw JSON."""
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000, **params)
    body = response.http_response.json()
    assert body["next_page"] is None
    data: list[dict[str, Any]] = body["data"]
    strictly_valid(data)
    return data


def wait_until_idle(client: anthropic.Anthropic, session_id: str) -> list[Any]:
    """Replay the log from its first event until the session goes idle (no polling, no sleeps)."""
    first = raw_events(client, session_id)[0]["id"]
    seen: list[Any] = []
    with client.beta.sessions.events.stream(session_id, extra_headers={"Last-Event-ID": first}) as stream:
        for event in stream:
            seen.append(event)
            if event.type == "session.status_idle":
                break
    return seen


def texts(event: Any) -> list[str]:
    return [block.text for block in event.content if block.type == "text"]


# --- agents -----------------------------------------------------------------------------------


def test_create_agent_with_model_string(client: anthropic.Anthropic) -> None:
    agent = create_agent(client, name="plain", model=MODEL, system="be brief", description="d")

    assert agent.id.startswith("agent_")
    assert agent.type == "agent"
    assert agent.model.id == MODEL
    assert (agent.name, agent.system, agent.description) == ("plain", "be brief", "d")
    assert agent.version == 1
    assert agent.tools == [] and agent.mcp_servers == [] and agent.skills == []
    assert agent.metadata == {}
    assert agent.execution_identity.type == "service_account"
    assert agent.archived_at is None
    assert agent.created_at == agent.updated_at


def test_create_agent_with_model_config(client: anthropic.Anthropic) -> None:
    agent = create_agent(client, model={"id": MODEL, "speed": "fast"})

    assert agent.model.id == MODEL
    assert agent.model.speed == "fast"


def test_agent_toolset_defaults_to_always_allow(client: anthropic.Anthropic) -> None:
    agent = create_agent(
        client,
        tools=[
            {
                "type": AGENT_TOOLSET,
                "configs": [
                    {"name": "bash", "permission_policy": {"type": "always_ask"}},
                    {"name": "web_search", "enabled": False},
                ],
            }
        ],
    )

    [toolset] = agent.tools
    assert isinstance(toolset, BetaManagedAgentsAgentToolset20260401)
    assert toolset.default_config.enabled is True
    assert toolset.default_config.permission_policy.type == "always_allow"
    configs = {config.name: config for config in toolset.configs}
    assert configs["bash"].permission_policy.type == "always_ask"
    assert configs["bash"].enabled is True
    assert configs["web_search"].enabled is False
    assert configs["web_search"].permission_policy.type == "always_allow"


def test_agent_toolset_default_config_applies_to_unconfigured_fields(client: anthropic.Anthropic) -> None:
    agent = create_agent(
        client,
        tools=[
            {
                "type": AGENT_TOOLSET,
                "default_config": {"enabled": False, "permission_policy": {"type": "always_ask"}},
                "configs": [{"name": "read", "enabled": True}, {"name": "grep"}],
            }
        ],
    )

    [toolset] = agent.tools
    assert isinstance(toolset, BetaManagedAgentsAgentToolset20260401)
    assert toolset.default_config.enabled is False
    assert toolset.default_config.permission_policy.type == "always_ask"
    configs = {config.name: config for config in toolset.configs}
    assert (configs["read"].enabled, configs["read"].permission_policy.type) == (True, "always_ask")
    assert (configs["grep"].enabled, configs["grep"].permission_policy.type) == (False, "always_ask")


def test_mcp_toolset_defaults_to_always_ask(client: anthropic.Anthropic) -> None:
    agent = create_agent(
        client,
        mcp_servers=[{"type": "url", "name": "docs", "url": "https://mcp.example.com/mcp"}],
        tools=[
            {
                "type": "mcp_toolset",
                "mcp_server_name": "docs",
                "configs": [{"name": "search", "permission_policy": {"type": "always_allow"}}],
            }
        ],
    )

    assert [(s.name, s.url) for s in agent.mcp_servers] == [("docs", "https://mcp.example.com/mcp")]
    [toolset] = agent.tools
    assert isinstance(toolset, BetaManagedAgentsMCPToolset)
    assert toolset.mcp_server_name == "docs"
    assert toolset.default_config.permission_policy.type == "always_ask"
    [config] = toolset.configs
    assert (config.name, config.permission_policy.type) == ("search", "always_allow")


def test_custom_tool_is_kept_as_given(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    agent = create_agent(
        client,
        tools=[{"type": "custom", "name": "get_weather", "description": "Weather.", "input_schema": schema}],
    )

    [tool] = agent.tools
    assert isinstance(tool, BetaManagedAgentsCustomTool)
    assert (tool.name, tool.description) == ("get_weather", "Weather.")
    assert tool.input_schema.model_dump(exclude_none=True) == schema


def test_retrieve_agent(client: anthropic.Anthropic) -> None:
    created = create_agent(client, name="findable", metadata={"team": "a"})

    assert retrieve_agent(client, created.id) == created


def test_retrieve_past_agent_version(client: anthropic.Anthropic) -> None:
    created = create_agent(client, name="first")
    update_agent(client, created.id, name="second")

    past = retrieve_agent(client, created.id, version=1)
    current = retrieve_agent(client, created.id)

    assert past == created
    assert (current.name, current.version) == ("second", 2)


def test_update_creates_new_version_and_keeps_the_old_one(client: anthropic.Anthropic) -> None:
    created = create_agent(client, name="v1", system="one")

    updated = update_agent(client, created.id, version=1, system="two")

    assert updated.version == 2
    assert (updated.name, updated.system) == ("v1", "two")
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    versions, next_page = strict_page(
        BetaManagedAgentsAgent, client.beta.agents.versions.with_raw_response.list(created.id)
    )
    assert next_page is None
    assert versions == [updated, created]


def test_noop_update_keeps_the_version(client: anthropic.Anthropic) -> None:
    created = create_agent(client, name="same", system="same", metadata={"k": "v"})

    unchanged = update_agent(client, created.id, version=1, name="same", system="same", metadata={"k": "v"})

    assert unchanged == created
    assert [v.version for v in client.beta.agents.versions.list(created.id)] == [1]


def test_update_with_stale_version_conflicts(client: anthropic.Anthropic) -> None:
    created = create_agent(client)
    update_agent(client, created.id, version=1, name="moved on")

    with pytest.raises(anthropic.ConflictError) as caught:
        client.beta.agents.update(created.id, version=1, name="stale")

    assert caught.value.status_code == 409
    assert caught.value.type == "conflict_error"
    assert retrieve_agent(client, created.id).name == "moved on"


def test_concurrent_updates_with_the_same_version_let_exactly_one_win(client: anthropic.Anthropic) -> None:
    created = create_agent(client, name="race")
    start = threading.Barrier(2)

    def update(name: str) -> BetaManagedAgentsAgent | anthropic.ConflictError:
        start.wait()
        try:
            return client.beta.agents.update(created.id, version=1, name=name)
        except anthropic.ConflictError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(update, ["left", "right"]))

    winners = [o for o in outcomes if isinstance(o, BetaManagedAgentsAgent)]
    losers = [o for o in outcomes if isinstance(o, anthropic.ConflictError)]
    assert len(winners) == 1 and len(losers) == 1
    assert winners[0].version == 2
    current = retrieve_agent(client, created.id)
    assert (current.name, current.version) == (winners[0].name, 2)
    assert [v.version for v in client.beta.agents.versions.list(created.id)] == [2, 1]


def test_metadata_update_patches_and_null_deletes(client: anthropic.Anthropic) -> None:
    created = create_agent(client, metadata={"keep": "1", "change": "2", "drop": "3"})

    updated = update_agent(client, created.id, metadata={"change": "two", "drop": None, "add": "4"})

    assert updated.metadata == {"keep": "1", "change": "two", "add": "4"}
    assert updated.version == 2


def test_archived_agent_is_listed_only_with_include_archived(client: anthropic.Anthropic) -> None:
    created = create_agent(client, name="to archive")

    archived = strict(BetaManagedAgentsAgent, client.beta.agents.with_raw_response.archive(created.id))

    assert archived.archived_at is not None
    assert created.id not in {a.id for a in client.beta.agents.list(limit=100)}
    assert created.id in {a.id for a in client.beta.agents.list(limit=100, include_archived=True)}
    assert retrieve_agent(client, created.id).archived_at == archived.archived_at


def test_archived_agent_cannot_be_updated(client: anthropic.Anthropic) -> None:
    created = create_agent(client)
    client.beta.agents.archive(created.id)

    with pytest.raises(anthropic.BadRequestError) as caught:
        client.beta.agents.update(created.id, name="too late")

    assert caught.value.status_code == 400
    assert "archived" in caught.value.message


def test_agent_list_paginates_newest_first(client: anthropic.Anthropic) -> None:
    created = [create_agent(client, name=f"page {i}").id for i in range(5)]

    first, next_page = strict_page(BetaManagedAgentsAgent, client.beta.agents.with_raw_response.list(limit=2))
    listed = [agent.id for agent in client.beta.agents.list(limit=2)]

    assert [a.id for a in first] == created[::-1][:2]
    assert next_page is not None
    assert len(listed) == len(set(listed))
    mine = [agent_id for agent_id in listed if agent_id in created]
    assert mine == created[::-1]
    assert listed[:5] == created[::-1]


# --- environments -----------------------------------------------------------------------------


def test_environment_defaults_to_unrestricted_cloud(client: anthropic.Anthropic) -> None:
    environment = create_environment(client, name="defaults")

    assert environment.id.startswith("env_")
    assert environment.type == "environment"
    assert environment.config.type == "cloud"
    assert environment.config.networking.type == "unrestricted"
    packages = environment.config.packages
    assert (packages.apt, packages.cargo, packages.gem, packages.go, packages.npm, packages.pip) == (
        [],
        [],
        [],
        [],
        [],
        [],
    )
    assert environment.metadata == {}
    assert environment.archived_at is None


def test_environment_with_limited_networking_and_packages(client: anthropic.Anthropic) -> None:
    environment = create_environment(
        client,
        name="locked down",
        config={
            "type": "cloud",
            "networking": {
                "type": "limited",
                "allowed_hosts": ["api.example.org", "*.example.com"],
                "allow_package_managers": True,
            },
            "packages": {"pip": ["requests==2.32.3"], "npm": ["left-pad"], "apt": ["ripgrep"]},
        },
    )

    assert environment.config.type == "cloud"
    networking = environment.config.networking
    assert networking.type == "limited"
    assert networking.allowed_hosts == ["api.example.org", "*.example.com"]
    assert networking.allow_package_managers is True
    assert networking.allow_mcp_servers is False
    packages = environment.config.packages
    assert (packages.pip, packages.npm, packages.apt, packages.go) == (
        ["requests==2.32.3"],
        ["left-pad"],
        ["ripgrep"],
        [],
    )


def test_self_hosted_environment(client: anthropic.Anthropic) -> None:
    environment = create_environment(client, name="on prem", config={"type": "self_hosted"})

    assert environment.config.type == "self_hosted"


def test_retrieve_environment(client: anthropic.Anthropic) -> None:
    created = create_environment(client, name="findable", description="d", metadata={"k": "v"})

    assert strict(BetaEnvironment, client.beta.environments.with_raw_response.retrieve(created.id)) == created


def test_update_environment(client: anthropic.Anthropic) -> None:
    created = create_environment(client, name="before", metadata={"keep": "1", "drop": "2"})

    updated = strict(
        BetaEnvironment,
        client.beta.environments.with_raw_response.update(
            created.id,
            name="after",
            description="now described",
            metadata={"drop": None, "add": "3"},
            config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["example.com"]}},
        ),
    )

    assert (updated.name, updated.description) == ("after", "now described")
    assert updated.metadata == {"keep": "1", "add": "3"}
    assert updated.config.type == "cloud"
    assert updated.config.networking.type == "limited"
    assert updated.config.networking.allowed_hosts == ["example.com"]
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert strict(BetaEnvironment, client.beta.environments.with_raw_response.retrieve(created.id)) == updated


def test_environment_list_paginates_newest_first(client: anthropic.Anthropic) -> None:
    created = [create_environment(client, name=f"page {i}").id for i in range(5)]

    first, next_page = strict_page(BetaEnvironment, client.beta.environments.with_raw_response.list(limit=2))
    listed = [environment.id for environment in client.beta.environments.list(limit=2)]

    assert [e.id for e in first] == created[::-1][:2]
    assert next_page is not None
    assert len(listed) == len(set(listed))
    assert [environment_id for environment_id in listed if environment_id in created] == created[::-1]


def test_archived_environment_is_listed_only_with_include_archived(client: anthropic.Anthropic) -> None:
    created = create_environment(client, name="to archive")

    archived = strict(BetaEnvironment, client.beta.environments.with_raw_response.archive(created.id))

    assert archived.archived_at is not None
    assert created.id not in {e.id for e in client.beta.environments.list(limit=100)}
    assert created.id in {e.id for e in client.beta.environments.list(limit=100, include_archived=True)}


def test_delete_environment(client: anthropic.Anthropic) -> None:
    created = create_environment(client, name="to delete")

    deleted = strict(
        BetaEnvironmentDeleteResponse, client.beta.environments.with_raw_response.delete(created.id)
    )

    assert (deleted.id, deleted.type) == (created.id, "environment_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.environments.retrieve(created.id)


def test_delete_environment_in_use_conflicts(client: anthropic.Anthropic) -> None:
    environment = create_environment(client, name="in use")
    create_session(client, agent=create_agent(client).id, environment_id=environment.id)

    with pytest.raises(anthropic.ConflictError) as caught:
        client.beta.environments.delete(environment.id)

    assert caught.value.status_code == 409
    assert client.beta.environments.retrieve(environment.id).id == environment.id


# --- sessions ---------------------------------------------------------------------------------


def test_create_session_with_agent_id(client: anthropic.Anthropic, environment: Any) -> None:
    agent = create_agent(client, name="worker", system="work")

    session = create_session(
        client, agent=agent.id, environment_id=environment.id, title="first", metadata={"ticket": "T-1"}
    )

    assert session.id.startswith("sesn_")
    assert session.type == "session"
    assert (session.agent.id, session.agent.version, session.agent.name) == (agent.id, 1, "worker")
    assert session.agent.system == "work"
    assert session.environment_id == environment.id
    assert (session.title, session.metadata) == ("first", {"ticket": "T-1"})
    assert session.status == "idle"
    assert session.archived_at is None
    assert session.vault_ids == [] and session.resources == []
    assert session.usage.input_tokens == 0 and session.usage.output_tokens == 0


def test_create_session_pins_an_old_agent_version(client: anthropic.Anthropic, environment: Any) -> None:
    agent = create_agent(client, name="old", system="old prompt")
    update_agent(client, agent.id, name="new", system="new prompt")

    session = create_session(
        client, agent={"type": "agent", "id": agent.id, "version": 1}, environment_id=environment.id
    )

    assert (session.agent.id, session.agent.version) == (agent.id, 1)
    assert (session.agent.name, session.agent.system) == ("old", "old prompt")


def test_retrieve_session(client: anthropic.Anthropic, environment: Any) -> None:
    created = create_session(client, agent=create_agent(client).id, environment_id=environment.id, title="t")

    retrieved = retrieve_session(client, created.id)

    assert retrieved.model_dump(exclude={"stats"}) == created.model_dump(exclude={"stats"})


def test_update_session_title_and_metadata(client: anthropic.Anthropic, environment: Any) -> None:
    created = create_session(
        client,
        agent=create_agent(client).id,
        environment_id=environment.id,
        title="before",
        metadata={"keep": "1", "drop": "2"},
    )

    updated = strict(
        BetaManagedAgentsSession,
        client.beta.sessions.with_raw_response.update(
            created.id, title="after", metadata={"drop": None, "add": "3"}
        ),
    )

    assert updated.title == "after"
    assert updated.metadata == {"keep": "1", "add": "3"}
    assert updated.updated_at > created.updated_at
    assert retrieve_session(client, created.id).title == "after"


def test_list_sessions_filters_by_agent(client: anthropic.Anthropic, environment: Any) -> None:
    agent = create_agent(client)
    other = create_agent(client)
    mine = [create_session(client, agent=agent.id, environment_id=environment.id).id for _ in range(3)]
    create_session(client, agent=other.id, environment_id=environment.id)

    page, _ = strict_page(
        BetaManagedAgentsSession, client.beta.sessions.with_raw_response.list(agent_id=agent.id)
    )
    listed = [session.id for session in client.beta.sessions.list(agent_id=agent.id, limit=2)]

    assert [s.id for s in page] == mine[::-1]
    assert listed == mine[::-1]


def test_archived_session_is_listed_only_with_include_archived(
    client: anthropic.Anthropic, environment: Any
) -> None:
    agent = create_agent(client)
    created = create_session(client, agent=agent.id, environment_id=environment.id)

    archived = strict(BetaManagedAgentsSession, client.beta.sessions.with_raw_response.archive(created.id))

    assert archived.archived_at is not None
    assert [s.id for s in client.beta.sessions.list(agent_id=agent.id)] == []
    assert [s.id for s in client.beta.sessions.list(agent_id=agent.id, include_archived=True)] == [created.id]


def test_delete_session(client: anthropic.Anthropic, environment: Any) -> None:
    created = create_session(client, agent=create_agent(client).id, environment_id=environment.id)

    deleted = strict(
        BetaManagedAgentsDeletedSession, client.beta.sessions.with_raw_response.delete(created.id)
    )

    assert (deleted.id, deleted.type) == (created.id, "session_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.retrieve(created.id)


def test_initial_events_start_the_session(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "hello back"}]}])
    agent = create_agent(client, system=f"You are a test agent. {marker}")

    session = create_session(
        client, agent=agent.id, environment_id=environment.id, initial_events=[user_message("hello")]
    )
    streamed = wait_until_idle(client, session.id)

    assert [texts(e) for e in streamed if e.type == "agent.message"] == [["hello back"]]
    logged = raw_events(client, session.id)
    assert logged[0]["type"] == "user.message"
    assert logged[0]["content"] == [{"type": "text", "text": "hello"}]
    assert [e["id"] for e in logged[1:]] == [e.id for e in streamed]
    assert retrieve_session(client, session.id).status == "idle"
    assert len(scripts.requests_for(marker)) == 1


# --- the event log ----------------------------------------------------------------------------


@pytest.fixture
def finished_session(client: anthropic.Anthropic, environment: Any, scripts: Scripts) -> str:
    """A session whose first turn (three user messages, one reply) has run to idle."""
    marker = scripts.add([{"content": [{"type": "text", "text": "got all three"}]}])
    agent = create_agent(client, system=marker)
    session = create_session(
        client,
        agent=agent.id,
        environment_id=environment.id,
        initial_events=[user_message("one"), user_message("two"), user_message("three")],
    )
    wait_until_idle(client, session.id)
    return session.id


def test_event_list_paginates(client: anthropic.Anthropic, finished_session: str) -> None:
    everything = [e["id"] for e in raw_events(client, finished_session)]

    first = client.beta.sessions.events.with_raw_response.list(finished_session, limit=2).http_response.json()
    paged = [event.id for event in client.beta.sessions.events.list(finished_session, limit=2)]

    assert len(everything) > 4
    strictly_valid(first["data"])
    assert [e["id"] for e in first["data"]] == everything[:2]
    assert first["next_page"] is not None
    assert paged == everything


def test_event_list_in_descending_order(client: anthropic.Anthropic, finished_session: str) -> None:
    everything = [e["id"] for e in raw_events(client, finished_session)]

    descending = [e["id"] for e in raw_events(client, finished_session, order="desc")]
    paged = [event.id for event in client.beta.sessions.events.list(finished_session, limit=3, order="desc")]

    assert descending == everything[::-1]
    assert paged == everything[::-1]


def test_event_list_filters_by_type(client: anthropic.Anthropic, finished_session: str) -> None:
    messages = raw_events(client, finished_session, types=["user.message"])
    replies = raw_events(client, finished_session, types=["agent.message"])

    assert [m["content"][0]["text"] for m in messages] == ["one", "two", "three"]
    assert {m["type"] for m in messages} == {"user.message"}
    assert [r["content"] for r in replies] == [[{"type": "text", "text": "got all three"}]]
