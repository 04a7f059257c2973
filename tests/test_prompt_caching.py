"""Prompt caching, on by default: what the model receives and what the session is billed.

Sessions run through the SDK against a gateway process, a scripted model process (which models
the API's prompt cache) and an MCP server process. The requests are read back from the
scripted model, so the assertions are about the bytes the model was sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.harness.caching import with_cache_breakpoints, without_cache_breakpoints
from gateway.scripted_model.cache import problem
from tests.conftest import Scripts
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import mcp_agent, send_and_stream, strictly_valid, user_message

EPHEMERAL = {"type": "ephemeral"}
SONNET = {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75}
"""List prices per million tokens the trail page's estimate uses for ``claude-sonnet-4-6``."""


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.upstream_mcp") as server:
        yield server


def marks(request: dict[str, Any]) -> list[str]:
    """Where the request carries ``cache_control``, as paths, in prompt order."""
    found = [f"tools.{i}" for i, tool in enumerate(request.get("tools") or []) if "cache_control" in tool]
    system = request.get("system")
    if isinstance(system, list):
        found += [f"system.{i}" for i, block in enumerate(system) if "cache_control" in block]
    for i, message in enumerate(request["messages"]):
        content = message["content"] if isinstance(message["content"], list) else []
        found += [f"messages.{i}.content.{j}" for j, block in enumerate(content) if "cache_control" in block]
    return found


def prefix_bytes(request: dict[str, Any], upto: str) -> str:
    """The prompt up to and including the block at ``upto``, serialised in the order it was
    sent, with the marks taken out (moving a mark does not change what is cached)."""
    plain = without_cache_breakpoints(request)
    _, i, _, j = upto.split(".")
    messages = plain["messages"][: int(i)]
    messages.append(
        {**plain["messages"][int(i)], "content": plain["messages"][int(i)]["content"][: int(j) + 1]}
    )
    return json.dumps([plain.get("tools"), plain.get("system"), messages], ensure_ascii=False)


def expected_marks(request: dict[str, Any]) -> list[str]:
    """Last tool, system prompt, the previous user message's last block, the last block."""
    messages = request["messages"]
    expected = [f"tools.{len(request['tools']) - 1}", "system.0"]
    users = [i for i, m in enumerate(messages[:-1]) if m["role"] == "user"]
    if users:
        expected.append(f"messages.{users[-1]}.content.{len(messages[users[-1]]['content']) - 1}")
    expected.append(f"messages.{len(messages) - 1}.content.{len(messages[-1]['content']) - 1}")
    return expected


def raw_events(client: anthropic.Anthropic, session_id: str) -> list[dict[str, Any]]:
    response = client.beta.sessions.events.with_raw_response.list(session_id, limit=1000)
    events: list[dict[str, Any]] = response.http_response.json()["data"]
    strictly_valid(events)
    return events


def model_usages(events: list[dict[str, Any]]) -> list[dict[str, int]]:
    return [e["model_usage"] for e in events if e["type"] == "span.model_request_end"]


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for item in family.samples:
            if item.name == name and all(item.labels.get(k) == v for k, v in labels.items()):
                return float(item.value)
    return 0.0


def scrape(gateway: ServerProcess, api_key: str) -> str:
    response = httpx2.get(gateway.url + "/metrics", headers={"x-api-key": api_key})
    response.raise_for_status()
    return response.text


TWO_TURNS = [
    {"content": [{"type": "tool_use", "name": "add", "input": {"a": 1, "b": 2}}]},
    {"content": [{"type": "tool_use", "name": "add", "input": {"a": 3, "b": 4}}]},
    {"content": [{"type": "text", "text": "The sums are in: {{last_tool_result}}."}]},
    {"content": [{"type": "tool_use", "name": "add", "input": {"a": 5, "b": 6}}]},
    {"content": [{"type": "text", "text": "And now {{last_tool_result}}."}]},
]
"""Turn one: two tool calls and an answer (three model calls); turn two: one tool call and an answer."""


def run_two_turns(client: anthropic.Anthropic, agent: Any, environment: Any) -> str:
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    first = send_and_stream(client, session.id, [user_message("add a few numbers")])
    second = send_and_stream(client, session.id, [user_message("one more, please")])
    assert first[-1].stop_reason.type == "end_turn" and second[-1].stop_reason.type == "end_turn"
    return str(session.id)


def test_the_prefix_up_to_the_last_breakpoint_is_resent_byte_identical_within_and_across_turns(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(TWO_TURNS)
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp")

    run_two_turns(client, agent, environment)

    sent = scripts.requests_for(marker)
    assert len(sent) == 5
    for request in sent:
        assert marks(request) == expected_marks(request)
        assert len(marks(request)) <= 4 and problem(request) is None
        assert request["system"] == [{"type": "text", "text": marker, "cache_control": EPHEMERAL}]
    # Calls 1→2 and 2→3 are within turn one, 3→4 crosses into turn two, 4→5 is within it.
    for before, after in pairwise(sent):
        last = marks(before)[-1]
        assert prefix_bytes(after, last) == prefix_bytes(before, last)
        assert last in marks(after), "the next call marks the block this call cached last"


def test_later_calls_read_what_earlier_calls_cached_in_spans_session_usage_cost_and_metrics(
    client: anthropic.Anthropic,
    scripts: Scripts,
    environment: Any,
    upstream: ServerProcess,
    gateway: ServerProcess,
    api_key: str,
) -> None:
    marker = scripts.add(TWO_TURNS)
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp")
    metrics_before = scrape(gateway, api_key)

    session_id = run_two_turns(client, agent, environment)

    usages = model_usages(raw_events(client, session_id))
    assert len(usages) == 5
    assert usages[0]["cache_creation_input_tokens"] > 0
    for before, after in pairwise(usages):
        cached = before["cache_read_input_tokens"] + before["cache_creation_input_tokens"]
        assert after["cache_read_input_tokens"] == cached, "everything the previous call cached is read"
        assert after["cache_creation_input_tokens"] > 0, "and what is new since then is written"
    totals = {name: sum(u[name] for u in usages) for name in usages[0]}

    usage = client.beta.sessions.retrieve(session_id).usage
    assert usage.cache_read_input_tokens == totals["cache_read_input_tokens"]
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == totals["cache_creation_input_tokens"]
    assert (usage.input_tokens, usage.output_tokens) == (totals["input_tokens"], totals["output_tokens"])

    insights = httpx2.get(
        f"{gateway.url}/v1/tether/sessions/{session_id}/insights", headers={"x-api-key": api_key}
    ).json()
    assert insights["usage"] == totals
    priced = (
        totals["input_tokens"] * SONNET["input"]
        + totals["output_tokens"] * SONNET["output"]
        + totals["cache_read_input_tokens"] * SONNET["cache_read"]
        + totals["cache_creation_input_tokens"] * SONNET["cache_write"]
    ) / 1_000_000
    assert insights["estimated_cost"]["usd"] == pytest.approx(priced, abs=1e-6)

    metrics_after = scrape(gateway, api_key)
    for kind in ("cache_read_input", "cache_creation_input"):
        grew = metric(metrics_after, "tether_model_tokens_total", kind=kind) - metric(
            metrics_before, "tether_model_tokens_total", kind=kind
        )
        assert grew == totals[f"{kind}_tokens"]


def test_prompt_caching_off_sends_no_cache_control_and_reads_nothing(
    client: anthropic.Anthropic, scripts: Scripts, environment: Any, upstream: ServerProcess
) -> None:
    marker = scripts.add(TWO_TURNS)
    agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp")
    agent = client.beta.agents.update(
        agent.id, version=agent.version, metadata={"tether.prompt_caching": "off"}
    )

    session_id = run_two_turns(client, agent, environment)

    sent = scripts.requests_for(marker)
    assert len(sent) == 5
    assert all("cache_control" not in json.dumps(request) for request in sent)
    assert all(request["system"] == marker for request in sent)
    usages = model_usages(raw_events(client, session_id))
    assert [(u["cache_read_input_tokens"], u["cache_creation_input_tokens"]) for u in usages] == [(0, 0)] * 5
    usage = client.beta.sessions.retrieve(session_id).usage
    assert usage.cache_read_input_tokens == 0 and usage.input_tokens == sum(u["input_tokens"] for u in usages)


def test_a_bad_prompt_caching_value_is_a_400_on_create_and_on_update(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.agents.create(
            name="bad-cache", model="claude-sonnet-4-6", metadata={"tether.prompt_caching": "sometimes"}
        )
    assert refused.value.status_code == 400
    error = refused.value.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "metadata.tether.prompt_caching: must be one of on, off"

    agent = client.beta.agents.create(
        name="good-cache", model="claude-sonnet-4-6", metadata={"tether.prompt_caching": "on"}
    )
    with pytest.raises(anthropic.BadRequestError, match=r"tether\.prompt_caching: must be one of on, off"):
        client.beta.agents.update(agent.id, version=agent.version, metadata={"tether.prompt_caching": "1"})


def test_the_gateway_default_can_be_off_and_an_agent_can_turn_caching_back_on(
    tmp_path: Path, model_server: ServerProcess, api_key: str, scripts: Scripts, upstream: ServerProcess
) -> None:
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_PROMPT_CACHING": "off",
    }
    with (
        running_server(["gateway", "--port", "0", "--data-dir", str(tmp_path)], env) as gateway,
        anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=30) as client,
    ):
        environment = client.beta.environments.create(name="cache-default-env")
        plain, cached = scripts.add(TWO_TURNS[:3]), scripts.add(TWO_TURNS[:3])
        for marker, metadata in ((plain, {}), (cached, {"tether.prompt_caching": "on"})):
            agent = mcp_agent(client, marker, "calc", upstream.url + "/mcp")
            agent = client.beta.agents.update(agent.id, version=agent.version, metadata=metadata)
            session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
            send_and_stream(client, session.id, [user_message("add")])

    assert all("cache_control" not in json.dumps(r) for r in scripts.requests_for(plain))
    assert [len(marks(r)) for r in scripts.requests_for(cached)] == [3, 4, 4]


# The breakpoint pass on its own ------------------------------------------------------------------


def _request(*messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-6",
        "max_tokens": 100,
        "system": "be brief",
        "tools": [{"name": "t", "description": "d", "input_schema": {"type": "object"}}],
        "messages": list(messages),
    }


def test_a_mark_never_lands_on_an_empty_text_or_a_thinking_block() -> None:
    request = _request(
        {"role": "user", "content": [{"type": "text", "text": "question"}, {"type": "text", "text": " "}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "answer"},
                {"type": "thinking", "thinking": "hm", "signature": "s"},
            ],
        },
        {"role": "user", "content": [{"type": "text", "text": ""}]},
    )

    marked = with_cache_breakpoints(request)

    assert marks(marked) == ["tools.0", "system.0", "messages.0.content.0", "messages.1.content.0"]
    assert problem(marked) is None
    assert "cache_control" not in json.dumps(request), "the request passed in is left as it was"


def test_marks_already_in_a_request_are_replaced_so_there_are_never_more_than_four() -> None:
    block = {"type": "text", "text": "x", "cache_control": EPHEMERAL}
    request = _request(
        {"role": "user", "content": [dict(block), dict(block), dict(block)]},
        {"role": "assistant", "content": [dict(block)]},
        {"role": "user", "content": [dict(block), {"type": "text", "text": "last"}]},
    )

    marked = with_cache_breakpoints(request)

    assert marks(marked) == ["tools.0", "system.0", "messages.0.content.2", "messages.2.content.1"]
    assert marks(without_cache_breakpoints(request)) == []


def test_two_rolling_marks_that_fall_on_one_block_make_one_mark_and_leave_the_input_alone() -> None:
    request = _request(
        {"role": "user", "content": [{"type": "text", "text": "question"}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
    )
    before = json.dumps(request)

    marked = with_cache_breakpoints(request)

    assert marks(marked) == ["tools.0", "system.0", "messages.0.content.0"]
    assert json.dumps(request) == before
    assert marked["messages"][1] is request["messages"][1], "unmarked messages are not copied"
