"""The express lane: 2026-07-28 ``tools/call`` relayed without the SDK's dispatch, answering
exactly as the SDK path does.

Two gateways share one 2026-07-28 upstream (``modern``) and one session-based upstream
(``old``): ``express`` as configured by default, ``sdk`` with ``TETHER_MCP_EXPRESS=0``.
The same raw requests go to both, and their answers (status, content type, JSON-RPC body
or SSE events) and audit records must be the same. The lane is told apart by what the
upstream sees: the express lane introduces itself as ``tether-mcp-gateway``, the SDK's
client as ``mcp``.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from tests.support.mcp_gateway_stack import GatewayStack, eventually, start_upstream, text_of
from tests.support.mcp_lanes import SHARED_CASES, VERSION, answer_of, both_lanes, tools_call

pytestmark = pytest.mark.anyio
VOLATILE_AUDIT = ("id", "created_at", "latency_ms")
CALL_TIMEOUT = {"TETHER_MCP_CALL_TIMEOUT": "3"}
TIMEOUT_MARKER = f"/tmp/.tether-express-timeout-{secrets.token_hex(4)}"


@pytest.fixture(scope="module")
def lanes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, GatewayStack]]:
    modern, old = start_upstream("modern"), start_upstream("old", legacy_only=True)
    try:
        upstreams = {"alpha": modern, "old": old}  # "alpha": the test policy's rules apply
        with both_lanes(
            tmp_path_factory, upstreams, {"modern": "alpha", "old": "old"}, CALL_TIMEOUT
        ) as stacks:
            yield stacks
    finally:
        modern.stop()
        old.stop()
        for left in Path(TIMEOUT_MARKER).parent.glob(Path(TIMEOUT_MARKER).name + "*"):
            left.unlink()


def _post(stack: GatewayStack, server: str, message: dict[str, Any], **headers: str) -> httpx2.Response:
    region = (
        message["params"]["arguments"].get("region")
        if isinstance(message["params"]["arguments"], dict)
        else None
    )
    if region is not None:  # the client mirrors the argument the tool's schema marks x-mcp-header
        headers = {"mcp-param-region": region, **headers}
    sent = {
        "x-api-key": stack.api_key,
        "mcp-protocol-version": VERSION,
        "accept": "application/json, text/event-stream",
        "mcp-method": message["method"],
        "mcp-name": message["params"]["name"],
        **headers,
    }
    return httpx2.post(stack.mcp_url(server), json=message, headers=sent, timeout=30)


def _audit(stack: GatewayStack) -> list[dict[str, Any]]:
    """The records without what differs between two gateways (ids, times, each one's policy path)."""
    records = stack.get("/v1/mcp_audit?limit=100")["data"]
    return [
        {key: value for key, value in record.items() if key not in VOLATILE_AUDIT}
        | {"caller": {k: v for k, v in record["caller"].items() if k != "id"}}
        | {"detail": re.sub(r"\S+/policy\.yaml", "policy.yaml", record["detail"] or "")}
        for record in records
    ]


CASES = {
    **SHARED_CASES,
    "mcp-param header": tools_call("region", {"region": "eu-west"}),
    "timeout": tools_call("block", {"marker": TIMEOUT_MARKER}),
}
"""``block`` touches its marker (in /tmp, shared by both gateways) and never answers."""


@pytest.mark.parametrize("case", list(CASES))
def test_both_lanes_answer_alike(lanes: dict[str, GatewayStack], case: str) -> None:
    message = CASES[case]
    answers = {lane: answer_of(_post(stack, "modern", message)) for lane, stack in lanes.items()}
    assert answers["express"] == answers["sdk"], case
    status, _, messages = answers["express"]
    assert messages[-1]["id"] == message["id"]
    assert status == (400 if case == "unknown tool" else 200)  # INVALID_PARAMS maps to 400


def test_the_lanes_leave_the_same_audit_records(lanes: dict[str, GatewayStack]) -> None:
    """Runs right after the cases above (same module, in file order): both logs hold the same records."""
    express, sdk = (_audit(lanes[lane]) for lane in ("express", "sdk"))
    assert express and len(express) == len(sdk)
    assert sorted(map(json.dumps, express)) == sorted(map(json.dumps, sdk))
    outcomes = {record["outcome"] for record in express}
    assert {"ok", "tool_error", "denied", "not_found", "timeout"} <= outcomes


def test_answers_match_their_meaning(lanes: dict[str, GatewayStack]) -> None:
    """Beyond agreeing: what each case answers through the express lane."""
    stack = lanes["express"]

    def last(case: str) -> dict[str, Any]:
        return answer_of(_post(stack, "modern", CASES[case]))[2][-1]

    ok = last("ok")["result"]
    assert ok["content"][0]["text"] == "modern:5" and ok["isError"] is False
    assert ok["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "tether-mcp-gateway"
    assert last("tool error")["result"]["isError"] is True
    assert "Destructive SQL" in last("denied by policy")["result"]["content"][0]["text"]
    assert last("unknown tool")["error"]["code"] == -32602
    assert last("mcp-param header")["result"]["content"][0]["text"] == (
        "modern region eu-west, header eu-west"
    )
    assert "timed out" in last("timeout")["result"]["content"][0]["text"]
    _, media, events = answer_of(_post(stack, "modern", CASES["progress"]))
    assert media == "text/event-stream"
    assert [event["params"]["progressToken"] for event in events[:-1]] == ["tok-1", "tok-1"]
    assert text_of_result(events[-1]) == "modern did 2 steps"


def text_of_result(message: dict[str, Any]) -> str:
    return "".join(block.get("text", "") for block in message["result"]["content"])


async def test_which_lane_carries_atools_call(lanes: dict[str, GatewayStack]) -> None:
    """2026-07-28 calls to HTTP upstreams of either era take the express lane; legacy clients do not."""
    seen = {}
    for lane, stack in lanes.items():
        for mode in ("auto", "legacy"):
            for server in ("modern", "old"):
                async with stack.connect(server, mode) as client:
                    seen[lane, mode, server] = text_of(await client.call_tool("client_name", {}))
    assert (
        seen.pop(("express", "auto", "modern"))
        == seen.pop(("express", "auto", "old"))
        == "tether-mcp-gateway"
    )
    assert set(seen.values()) == {"mcp"}, seen


def test_malformed_requests_get_the_sdkanswer_of(lanes: dict[str, GatewayStack]) -> None:
    """What the express lane does not admit reaches the SDK, which refuses it as before."""
    cases: list[tuple[dict[str, Any], dict[str, str]]] = [
        (tools_call("add", {"a": 1, "b": 2}), {"mcp-name": "other"}),  # header mismatch
        (tools_call("add", [1, 2]), {}),  # arguments not an object
        ({**tools_call("add", {"a": 1, "b": 2}), "id": True}, {}),  # not a JSON-RPC id
        (tools_call("add", {"a": 1, "b": 2}), {"accept": "application/json"}),  # no SSE in Accept
        (tools_call("region", {"region": "eu"}), {"mcp-param-region": "us"}),  # Mcp-Param mismatch
    ]
    for message, headers in cases:
        answers = {
            lane: answer_of(_post(stack, "modern", message, **headers)) for lane, stack in lanes.items()
        }
        assert answers["express"] == answers["sdk"], (message, headers)
        assert answers["express"][0] >= 400, answers


async def test_a_disconnecting_client_cancels_the_upstreamtools_call(
    lanes: dict[str, GatewayStack], tmp_path: Path
) -> None:
    """Closing the POST closes the upstream's POST (the call is cancelled there) and is audited."""
    stack = lanes["express"]
    marker = tmp_path / "m"
    message = tools_call("block", {"marker": str(marker)}, request_id="cancel-me")
    headers = {
        "x-api-key": stack.api_key,
        "mcp-protocol-version": VERSION,
        "accept": "application/json, text/event-stream",
        "mcp-method": "tools/call",
        "mcp-name": "block",
    }
    async with httpx2.AsyncClient(timeout=30) as http, anyio.create_task_group() as tasks:
        tasks.start_soon(functools.partial(http.post, stack.mcp_url("modern"), json=message, headers=headers))
        await eventually(_exists(marker), what="the call reached the upstream")
        tasks.cancel_scope.cancel()  # the client goes away mid-call
    await eventually(_exists(Path(str(marker) + ".cancelled")), what="the upstream saw the call cancelled")

    async def audited() -> bool:
        return any(r["outcome"] == "cancelled" and r["tool"] == "block" for r in _audit(stack))

    await eventually(audited, what="a cancelled audit record")


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await anyio.Path(path).exists()

    return check
