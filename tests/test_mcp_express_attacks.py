"""Adversarial checks of the express lane: a hostile upstream and a hostile client.

Two gateways (``express`` by default, ``sdk`` with ``TETHER_MCP_EXPRESS=0``) share one
2026-07-28 upstream (``tests.support.hostile_mcp_upstream``, registered as ``alpha`` so
the stack's policy applies to it) whose ``h_*`` tools answer with hostile bytes. Each
case is sent to both gateways as the same raw request, and what the client gets (status,
media type, every JSON-RPC message, parsed strictly: ``NaN`` is not JSON), the audit
outcome and whether the upstream's breaker counted a failure must be the same.

The breaker threshold is high, so no case opens the circuit for the next one; before each
case a plain call re-teaches the gateway the upstream's protocol era (a failure forgets
it) and resets the breaker's count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.mcp_gateway_stack import GatewayStack
from tests.support.mcp_lanes import VERSION, answer_of, both_lanes, tools_call
from tests.support.processes import start_server

SERVER = "hostile"
UPSTREAM = "alpha"


@pytest.fixture(scope="module")
def lanes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayStack]]:
    hostile = start_server(["--port", "0"], module="tests.support.hostile_mcp_upstream")
    settings = {"TETHER_MCP_CALL_TIMEOUT": "3", "TETHER_MCP_BREAKER_FAILURES": "1000"}
    try:
        with both_lanes(tmp_path_factory, {UPSTREAM: hostile}, {SERVER: UPSTREAM}, settings) as stacks:
            yield stacks
    finally:
        hostile.stop()


def _headers(stack: GatewayStack, name: str) -> dict[str, str]:
    return {
        "x-api-key": stack.api_key,
        "mcp-protocol-version": VERSION,
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-method": "tools/call",
        "mcp-name": name,
    }


def _strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        return f"invalid JSON ({exc})"


def _breaker_failures(stack: GatewayStack) -> int:
    failures: int = stack.get(f"/v1/mcp_servers/{UPSTREAM}")["health"]["breaker"]["consecutive_failures"]
    return failures


def _last_outcome(stack: GatewayStack) -> tuple[str, str | None]:
    record = stack.get("/v1/mcp_audit?limit=1")["data"][0]
    return record["outcome"], record["tool"]


def _send(stack: GatewayStack, name: str, body: bytes) -> dict[str, Any]:
    """What one raw request gets through ``stack``: the answer, the audit outcome, breaker failures."""
    warm = tools_call("add", {"a": 1, "b": 1}, request_id="warm")
    httpx2.post(stack.mcp_url(SERVER), json=warm, headers=_headers(stack, "add"), timeout=30)
    assert _breaker_failures(stack) == 0
    response = httpx2.post(stack.mcp_url(SERVER), content=body, headers=_headers(stack, name), timeout=30)
    return {
        "answer": answer_of(response, _strict),
        "audit": _last_outcome(stack),
        "breaker failures": _breaker_failures(stack),
    }


def _both(lanes: dict[str, GatewayStack], message: dict[str, Any] | bytes) -> dict[str, dict[str, Any]]:
    body = message if isinstance(message, bytes) else json.dumps(message).encode()
    name = json.loads(body)["params"]["name"]
    return {lane: _send(stack, name, body) for lane, stack in lanes.items()}


SECRET = "hostile-upstream-SECRET"
"""Part of the hostile upstream's identity: nothing the client gets may carry it."""

UPSTREAM_CASES = [
    # HTTP status and media type: the SDK's client answers each with a JSON-RPC error and
    # counts no breaker failure (the upstream answered).
    "h_500_json_result",
    "h_400_json_error",
    "h_503_text",
    "h_html",
    "h_202",
    "h_redirect",
    "h_not_json",
    # the envelope
    "h_wrong_id_sse",
    "h_other_event",
    "h_bad_sse_json",
    # the result: bytes no JSON encoder may send on, and outlines the SDK's 2026-07-28
    # validation refuses (or accepts) that the express lane's outline check does not
    "h_surrogate",
    "h_nan",
    "h_meta_list",
    "h_structured_null",
    "h_bad_block",
    "h_extra_fields",
    "h_no_result_type",
    "h_input_required",
    "h_server_info",
]
"""``h_wrong_id_json`` is left out on purpose: the SDK's client drops the stray answer and
waits for the timeout, which is no behaviour to copy (see the review report)."""


@pytest.mark.parametrize("case", UPSTREAM_CASES)
def test_hostile_upstream_answers_alike(lanes: dict[str, GatewayStack], case: str) -> None:
    got = _both(lanes, tools_call(case, {}))
    # A parse error echoes the upstream's bad body, which holds the lane's own upstream request id.
    # (and so its length, hence the column pydantic names).
    echoed = re.compile(r"input_value=.*?, input_type=", re.S)
    for lane in got.values():
        text = echoed.sub("input_value=…, input_type=", json.dumps(lane["answer"]))
        lane["answer"] = json.loads(re.sub(r"line 1 column \d+", "line 1 column …", text))
    assert got["express"] == got["sdk"]
    assert SECRET not in json.dumps(got["express"]["answer"])


def test_progress_relay_passes_only_the_calls_own_progress(lanes: dict[str, GatewayStack]) -> None:
    """Notifications with a foreign token, none, or a non-number are dropped; only progress,
    total and message go on (the upstream's ``_meta``, with its identity, does not)."""
    got = _both(lanes, tools_call("h_foreign_progress", {}, meta={"progressToken": "mine"}))
    assert got["express"] == got["sdk"]
    _, media, messages = got["express"]["answer"]
    assert media == "text/event-stream"
    assert [m["params"] for m in messages[:-1]] == [
        {"progressToken": "mine", "progress": 3, "message": "own token"}
    ]
    assert SECRET not in json.dumps(messages)


def test_a_client_string_no_encoder_accepts_is_refused_not_blamed_on_the_upstream(
    lanes: dict[str, GatewayStack],
) -> None:
    """A lone surrogate (``\\ud800``) in the arguments is the client's fault: it must neither
    count as the upstream's failure (a hostile client could open the circuit for everyone)
    nor leave the call unaudited."""
    body = json.dumps(tools_call("echo", {"text": "x"})).replace('"x"', '"\\ud800"').encode()
    got = _both(lanes, body)
    assert got["express"] == got["sdk"]
    for lane in lanes:
        assert got[lane]["breaker failures"] == 0, lane
        assert got[lane]["audit"][1] == "echo", lane


def test_duplicate_keys_are_read_alike_by_policy_and_upstream(lanes: dict[str, GatewayStack]) -> None:
    """Guard: ``{"text": "DROP TABLE t", "text": "hi"}`` is one value (the last) for the policy,
    the audit and the upstream, in both lanes."""
    body = json.dumps(tools_call("echo", {"text": "x"})).replace(
        '"text": "x"', '"text": "DROP TABLE t", "text": "hi"'
    )
    got = _both(lanes, body.encode())
    assert got["express"] == got["sdk"]
    assert got["express"]["audit"] == ("ok", "echo")
    assert got["express"]["answer"][2][0]["result"]["content"][0]["text"] == "hostile echo: hi"


CLIENT_CASES = {
    "float progress token": tools_call("add", {"a": 1, "b": 2}, meta={"progressToken": 1.5}),
    "bool progress token": tools_call("add", {"a": 1, "b": 2}, meta={"progressToken": True}),
    "huge id": tools_call("add", {"a": 1, "b": 2}, request_id=2**70),
    "empty string id": tools_call("add", {"a": 1, "b": 2}, request_id=""),
    "gateway-like id": tools_call("add", {"a": 1, "b": 2}, request_id=1, meta={"progressToken": "tether-1"}),
}


@pytest.mark.parametrize("case", list(CLIENT_CASES))
def test_odd_client_envelopes_answer_alike(lanes: dict[str, GatewayStack], case: str) -> None:
    got = _both(lanes, CLIENT_CASES[case])
    assert got["express"] == got["sdk"]
