"""The scripted model's prompt cache: reads, writes, TTL and the API's refusals, on the model
alone and through the SDK against a scripted model process."""

from __future__ import annotations

import json
import secrets
from typing import Any

import anthropic
import httpx2
import pytest

from gateway.scripted_model.cache import PromptCache, problem
from tests.support.processes import ServerProcess

MARK = {"type": "ephemeral"}


def text(value: str, marked: bool = False) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": value}
    if marked:
        block["cache_control"] = dict(MARK)
    return block


def request(*messages: dict[str, Any], system: Any = None, model: str = "claude-test") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 10, "messages": list(messages)}
    if system is not None:
        body["system"] = system
    return body


def user(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": list(blocks)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LONG = "word " * 400


def test_a_request_without_marks_is_billed_as_plain_input_and_caches_nothing() -> None:
    cache = PromptCache()
    plain = request(user(text(LONG)))

    first = cache.account(plain)

    assert first == {
        "input_tokens": len(json.dumps(plain["messages"])) // 4,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    assert cache.account(request(user(text(LONG, marked=True))))["cache_read_input_tokens"] == 0


def test_the_same_marked_prefix_is_written_once_then_read() -> None:
    cache = PromptCache()
    body = request(user(text(LONG, marked=True)), system=[text("system " * 50, marked=True)])

    first, second = cache.account(body), cache.account(body)

    assert first["cache_read_input_tokens"] == 0 and first["cache_creation_input_tokens"] > 0
    assert second["cache_read_input_tokens"] == first["cache_creation_input_tokens"]
    assert second["cache_creation_input_tokens"] == 0
    assert first["input_tokens"] == second["input_tokens"] >= 1


def test_a_longer_conversation_reads_the_prefix_cached_before_wherever_the_mark_now_sits() -> None:
    cache = PromptCache()
    question = request(user(text(LONG, marked=True)))
    written = cache.account(question)["cache_creation_input_tokens"]
    longer = request(
        user(text(LONG)),
        assistant(text("an answer")),
        user(text(LONG)),
        assistant(text("x")),
        user(text("more")),
    )
    longer["messages"][0]["content"][0]["cache_control"] = dict(MARK)
    longer["messages"][-1]["content"][0]["cache_control"] = dict(MARK)

    grown = cache.account(longer)

    assert grown["cache_read_input_tokens"] == written
    assert grown["cache_creation_input_tokens"] > written, "the new part up to the last mark is written"


def test_a_change_before_the_mark_or_another_model_misses() -> None:
    cache = PromptCache()
    cache.account(request(user(text(LONG, marked=True))))

    edited = cache.account(request(user(text(LONG + "!", marked=True))))
    other_model = cache.account(request(user(text(LONG, marked=True)), model="claude-other"))

    assert edited["cache_read_input_tokens"] == 0 and other_model["cache_read_input_tokens"] == 0


def test_entries_expire_after_the_ttl_unless_read_again() -> None:
    clock = Clock()
    cache = PromptCache(ttl=300.0, clock=clock)
    kept, dropped = (
        request(user(text("A " + LONG, marked=True))),
        request(user(text("B " + LONG, marked=True))),
    )
    cache.account(kept)
    cache.account(dropped)

    clock.now += 200
    assert cache.account(kept)["cache_read_input_tokens"] > 0  # a read refreshes the TTL
    clock.now += 200

    assert cache.account(kept)["cache_read_input_tokens"] > 0
    assert cache.account(dropped)["cache_read_input_tokens"] == 0


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (
            request(user(*(text(f"b{i}", marked=True) for i in range(5)))),
            "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        ),
        (
            request(user(text("", marked=True))),
            "messages.0.content.0.text: cache_control cannot be set for empty text blocks",
        ),
        (
            request(user(text("q")), assistant({"type": "thinking", "thinking": "t", "cache_control": MARK})),
            "messages.1.content.0: cache_control cannot be set for thinking blocks",
        ),
        (
            request(user({"type": "text", "text": "q", "cache_control": {"type": "forever"}})),
            "messages.0.content.0.cache_control: must be {'type': 'ephemeral'} (with an optional ttl 5m or 1h)",
        ),
    ],
)
def test_marks_the_api_refuses_are_refused(body: dict[str, Any], refusal: str) -> None:
    assert problem(body) == refusal


# Through the SDK ----------------------------------------------------------------------------------


def test_the_sdk_sees_cache_reads_and_a_scripted_usage_still_overrides_them(
    model_server: ServerProcess,
) -> None:
    match = "cache-" + secrets.token_hex(8)
    turns = [{"content": [{"type": "text", "text": "ok"}]}]
    httpx2.post(f"{model_server.url}/_scripts", json={"match": match, "turns": turns}).raise_for_status()
    overridden = "cache-" + secrets.token_hex(8)
    turns = [{"content": [{"type": "text", "text": "ok"}], "usage": {"cache_read_input_tokens": 7}}]
    httpx2.post(f"{model_server.url}/_scripts", json={"match": overridden, "turns": turns}).raise_for_status()
    system: Any = [{"type": "text", "text": f"{match} {LONG}", "cache_control": MARK}]

    with anthropic.Anthropic(base_url=model_server.url, api_key="x", max_retries=0) as sdk:
        first = sdk.messages.create(
            model="claude-test", max_tokens=10, system=system, messages=[user(text("hi"))]
        )
        second = sdk.messages.create(
            model="claude-test", max_tokens=10, system=system, messages=[user(text("hi"))]
        )
        system[0]["text"] = f"{overridden} {LONG}"
        forced = sdk.messages.create(
            model="claude-test", max_tokens=10, system=system, messages=[user(text("hi"))]
        )

    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation_input_tokens and first.usage.cache_creation_input_tokens > 0
    assert second.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    assert forced.usage.cache_read_input_tokens == 7
    assert forced.usage.cache_creation_input_tokens == first.usage.cache_creation_input_tokens


def test_the_scripted_model_refuses_a_fifth_mark_like_the_api(model_server: ServerProcess) -> None:
    with (
        anthropic.Anthropic(base_url=model_server.url, api_key="x", max_retries=0) as sdk,
        pytest.raises(anthropic.BadRequestError) as refused,
    ):
        sdk.messages.create(
            model="claude-test",
            max_tokens=10,
            messages=[user(*(text(f"b{i}", marked=True) for i in range(5)))],
        )

    assert refused.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "A maximum of 4 blocks with cache_control may be provided. Found 5.",
        },
    }
