"""Tether's filters on ``GET /v1/sessions`` through the SDK (``extra_query``): status,
environment, agent, needs-attention and search, cursor pagination under a filter, and the 400s
for bad values. Each test lists inside its own environment, so other tests' sessions never count."""

from __future__ import annotations

import secrets
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support.observability import wait_until
from tests.support.sessions import send_and_stream, user_message

ASK = {"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}


def _ids(client: anthropic.Anthropic, **query: Any) -> list[str]:
    return [s.id for s in client.beta.sessions.list(limit=100, extra_query=query)]


def _env(client: anthropic.Anthropic) -> str:
    return client.beta.environments.create(name="filters-" + secrets.token_hex(3)).id


def test_status_environment_and_agent_filters(client: anthropic.Anthropic, scripts: Scripts) -> None:
    marker = scripts.add([{"hang_first": 1, "content": [{"type": "text", "text": "late"}]}])
    env, other_env = _env(client), _env(client)
    agent = client.beta.agents.create(name="hanging", model="claude-sonnet-4-6", system=marker)
    other_agent = client.beta.agents.create(name="other", model="claude-sonnet-4-6")
    idle = client.beta.sessions.create(agent=agent.id, environment_id=env)
    running = client.beta.sessions.create(agent=agent.id, environment_id=env)
    elsewhere = client.beta.sessions.create(agent=other_agent.id, environment_id=other_env)
    send_and_stream(client, running.id, [user_message("go")], until="span.model_request_start")
    try:
        assert _ids(client, environment_id=env) == [running.id, idle.id]
        assert _ids(client, environment_id=env, status="running") == [running.id]
        assert _ids(client, environment_id=env, status=["idle"]) == [idle.id]
        assert _ids(client, environment_id=env, status=["idle", "running"]) == [running.id, idle.id]
        assert _ids(client, environment_id=env, status="terminated") == []
        # The SDK's own ``statuses`` parameter means the same.
        native = client.beta.sessions.list(statuses=["running"], extra_query={"environment_id": env})
        assert [s.id for s in native] == [running.id]
        assert _ids(client, environment_id=other_env) == [elsewhere.id]
        assert _ids(client, agent_id=other_agent.id) == [elsewhere.id]
        assert _ids(client, agent_id=agent.id, environment_id=other_env) == []
    finally:
        client.beta.sessions.events.send(running.id, events=[{"type": "user.interrupt"}])


def test_sessions_needing_attention_are_flagged_and_filtered(
    client: anthropic.Anthropic, scripts: Scripts
) -> None:
    asking = scripts.add(
        [
            {"content": [{"type": "tool_use", "name": "write", "input": {"file_path": "f", "content": "x"}}]},
            {"content": [{"type": "text", "text": "written"}]},
        ]
    )
    busy = {"status": 529, "type": "overloaded_error", "message": "busy"}
    failing = scripts.add([{"fail_first": [busy] * 3, "content": [{"type": "text", "text": "never"}]}])
    fine = scripts.add([{"content": [{"type": "text", "text": "all good"}]}])
    env = _env(client)
    waiting = client.beta.sessions.create(
        agent=client.beta.agents.create(name="a", model="claude-sonnet-4-6", system=asking, tools=[ASK]).id,  # type: ignore[list-item]
        environment_id=env,
    )
    exhausted = client.beta.sessions.create(
        agent=client.beta.agents.create(name="b", model="claude-sonnet-4-6", system=failing).id,
        environment_id=env,
    )
    done = client.beta.sessions.create(
        agent=client.beta.agents.create(name="c", model="claude-sonnet-4-6", system=fine).id,
        environment_id=env,
    )
    use = next(
        e for e in send_and_stream(client, waiting.id, [user_message("w")]) if e.type == "agent.tool_use"
    )
    assert (
        send_and_stream(client, exhausted.id, [user_message("x")])[-1].stop_reason.type == "retries_exhausted"
    )
    send_and_stream(client, done.id, [user_message("y")])

    def attention(session_id: str) -> Any:
        return client.beta.sessions.retrieve(session_id).model_extra["tether_attention"]  # type: ignore[index]

    assert [attention(s.id) for s in (waiting, exhausted, done)] == [
        "requires_action",
        "retries_exhausted",
        None,
    ]
    assert _ids(client, environment_id=env, needs_attention="true") == [exhausted.id, waiting.id]
    assert _ids(client, environment_id=env, needs_attention="false") == [done.id, exhausted.id, waiting.id]

    # Approving the call lets the session go on: once it idles at the end of its turn the flag is gone.
    confirm = {"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}
    send_and_stream(client, waiting.id, [confirm])
    wait_until(lambda: attention(waiting.id) is None, what="the flag to clear")
    assert _ids(client, environment_id=env, needs_attention="true") == [exhausted.id]


def test_search_matches_id_title_and_metadata_values(client: anthropic.Anthropic) -> None:
    env = _env(client)
    agent = client.beta.agents.create(name="searched", model="claude-sonnet-4-6")
    token = secrets.token_hex(4)
    report = client.beta.sessions.create(
        agent=agent.id, environment_id=env, title=f"Quarterly Report {token}"
    )
    ticket = client.beta.sessions.create(
        agent=agent.id, environment_id=env, metadata={"ticket": f"ZX-{token}"}
    )
    percent = client.beta.sessions.create(agent=agent.id, environment_id=env, title="100% done")
    assert _ids(client, environment_id=env, q="quarterly REPORT") == [report.id]
    assert _ids(client, environment_id=env, q=f"zx-{token}") == [ticket.id]
    assert _ids(client, environment_id=env, q=token) == [ticket.id, report.id]
    assert _ids(client, environment_id=env, q=percent.id[-10:]) == [percent.id]
    # Wildcards are plain characters: "%" matches only a literal percent sign.
    assert _ids(client, environment_id=env, q="0% d") == [percent.id]
    assert _ids(client, environment_id=env, q="%") == [percent.id]
    assert _ids(client, environment_id=env, q="0_") == []  # unescaped, "_" would match the "%"
    assert _ids(client, environment_id=env, q="no such text") == []


def test_cursor_pagination_is_exact_under_a_filter(client: anthropic.Anthropic) -> None:
    env, noise_env = _env(client), _env(client)
    agent = client.beta.agents.create(name="paged", model="claude-sonnet-4-6")
    created = []
    for n in range(5):
        created.append(client.beta.sessions.create(agent=agent.id, environment_id=env, title=f"paged {n}").id)
        client.beta.sessions.create(agent=agent.id, environment_id=noise_env, title=f"paged {n}")
    first = client.beta.sessions.list(limit=2, extra_query={"environment_id": env, "q": "paged"})
    assert [s.id for s in first.data] == [created[4], created[3]]
    assert first.has_next_page()
    walked = [s.id for s in first]  # auto-pagination follows next_page, keeping the filters
    assert walked == created[::-1]
    pages = 1
    page: Any = first
    while page.has_next_page():
        page = page.get_next_page()
        pages += 1
        assert len(page.data) <= 2
    assert pages == 3 and page.next_page is None


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ({"status": "sleeping"}, "status"),
        ({"status": ["idle", "done"]}, "status"),
        ({"needs_attention": "maybe"}, "needs_attention"),
        ({"q": "x" * 201}, "q"),
        ({"environment_id": "env 1; drop"}, "environment_id"),
        ({"agent_id": "a/b"}, "agent_id"),
        ({"page": "not-a-cursor", "q": "x"}, "page"),
    ],
)
def test_bad_filter_values_are_refused_with_400(
    client: anthropic.Anthropic, query: dict[str, Any], names: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.beta.sessions.list(extra_query=query)
    body = raised.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"].startswith(names + ":")
