"""Bad input over raw HTTP (and the SDK where natural): always an Anthropic-shaped error, never a 500.

Every error body must be ``{"type": "error", "error": {"type": ..., "message": ...}}``.
Inputs that used to crash a handler, or poison what it stored, are sent to a private gateway
so they cannot disturb the shared one; the last test checks the shared gateway logged no
traceback while it was fed everything else here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import user_message

MODEL = "claude-scripted"
NINE_MIB = 9 * 1024 * 1024
MISSING = {
    "agent": "agent_doesnotexist000000000000",
    "environment": "env_doesnotexist000000000000",
    "session": "sesn_doesnotexist000000000000",
}


def error_message(response: httpx2.Response, status: int, error_type: str) -> str:
    """Assert the Anthropic error shape and return the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"type", "error"}, body
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == error_type, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message
    return message


def invalid(response: httpx2.Response) -> str:
    return error_message(response, 400, "invalid_request_error")


def cursor(position: int) -> str:
    """A page token in the gateway's own format, for a position it never handed out."""
    return "page_" + base64.urlsafe_b64encode(str(position).encode()).decode().rstrip("=")


@pytest.fixture
def http(gateway: ServerProcess, api_key: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=gateway.url, headers={"x-api-key": api_key}, timeout=30) as client:
        yield client


@pytest.fixture
def agent_id(http: httpx2.Client) -> str:
    response = http.post("/v1/agents", json={"name": "errors", "model": MODEL})
    assert response.status_code == 200, response.text
    agent: str = response.json()["id"]
    return agent


@pytest.fixture
def environment_id(http: httpx2.Client) -> str:
    response = http.post("/v1/environments", json={"name": "errors"})
    assert response.status_code == 200, response.text
    environment: str = response.json()["id"]
    return environment


@pytest.fixture
def session_id(http: httpx2.Client, agent_id: str, environment_id: str) -> str:
    response = http.post("/v1/sessions", json={"agent": agent_id, "environment_id": environment_id})
    assert response.status_code == 200, response.text
    session: str = response.json()["id"]
    return session


def private_gateway(
    model_server: ServerProcess, api_key: str, data_dir: Path
) -> AbstractContextManager[ServerProcess]:
    """A gateway of our own, configured like the shared one."""
    env = {"TETHER_API_KEYS": api_key, "TETHER_MODEL_BASE_URL": model_server.url, "ANTHROPIC_API_KEY": ""}
    return running_server(["gateway", "--port", "0", "--data-dir", str(data_dir)], env)


@pytest.fixture(scope="module")
def scratch(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[httpx2.Client]:
    """A private gateway for inputs that have crashed handlers (a crash also drops the connection,
    hence ``connection: close``)."""
    with (
        private_gateway(model_server, api_key, tmp_path_factory.mktemp("scratch")) as server,
        httpx2.Client(
            base_url=server.url, headers={"x-api-key": api_key, "connection": "close"}, timeout=30
        ) as client,
    ):
        yield client


@pytest.fixture
def isolated(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[httpx2.Client]:
    """A private gateway per test, for inputs that may leave a stored resource behind that breaks lists."""
    with (
        private_gateway(model_server, api_key, tmp_path_factory.mktemp("isolated")) as server,
        httpx2.Client(
            base_url=server.url, headers={"x-api-key": api_key, "connection": "close"}, timeout=30
        ) as client,
    ):
        yield client


# --- authentication ---------------------------------------------------------------------------


def test_missing_api_key_is_rejected(gateway: ServerProcess) -> None:
    response = httpx2.get(f"{gateway.url}/v1/agents")

    assert "x-api-key" in error_message(response, 401, "authentication_error")


def test_wrong_api_key_is_rejected(gateway: ServerProcess) -> None:
    response = httpx2.get(f"{gateway.url}/v1/agents", headers={"x-api-key": "not-the-key"})

    error_message(response, 401, "authentication_error")


def test_wrong_api_key_raises_authentication_error_in_the_sdk(gateway: ServerProcess) -> None:
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="not-the-key", max_retries=0) as sdk,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        sdk.beta.agents.list()

    assert caught.value.type == "authentication_error"


def test_bearer_token_is_accepted(gateway: ServerProcess, api_key: str) -> None:
    response = httpx2.get(f"{gateway.url}/v1/agents", headers={"authorization": f"Bearer {api_key}"})

    assert response.status_code == 200, response.text
    assert "data" in response.json()


def test_wrong_bearer_token_is_rejected(gateway: ServerProcess) -> None:
    response = httpx2.get(f"{gateway.url}/v1/agents", headers={"authorization": "Bearer not-the-key"})

    error_message(response, 401, "authentication_error")


def test_health_needs_no_key(gateway: ServerProcess) -> None:
    response = httpx2.get(f"{gateway.url}/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- request bodies ---------------------------------------------------------------------------


def test_malformed_json_is_rejected(http: httpx2.Client) -> None:
    response = http.post(
        "/v1/agents", content=b'{"name": "a", "model":', headers={"content-type": "application/json"}
    )

    assert "JSON" in invalid(response)


def test_json_array_body_is_rejected(http: httpx2.Client) -> None:
    response = http.post("/v1/agents", json=[{"name": "a", "model": MODEL}])

    assert "object" in invalid(response)


def test_unknown_field_is_named(http: httpx2.Client) -> None:
    response = http.post("/v1/agents", json={"name": "a", "model": "m", "colour": 1})

    assert "colour" in invalid(response)


def test_wrong_tool_type_names_the_tool(http: httpx2.Client) -> None:
    response = http.post("/v1/agents", json={"name": "a", "model": "m", "tools": [{"type": "nope"}]})

    assert "tools.0" in invalid(response)


@pytest.mark.parametrize(
    ("path", "body", "location"),
    [
        (
            "/v1/agents",
            {
                "name": "a",
                "model": "m",
                "tools": [
                    {
                        "type": "custom",
                        "name": "has space",
                        "description": "d",
                        "input_schema": {"type": "object"},
                    }
                ],
            },
            "tools.0.name",
        ),
        (
            "/v1/environments",
            {
                "name": "e",
                "config": {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["a b"]}},
            },
            "config.networking.allowed_hosts",
        ),
        (
            "/v1/environments",
            {"name": "e", "config": {"type": "cloud", "packages": {"pip": ["foo; rm -rf /"]}}},
            "config.packages.pip",
        ),
    ],
    ids=["custom-tool-name", "allowed-host", "pip-package"],
)
def test_validation_error_names_the_json_path(
    http: httpx2.Client, path: str, body: dict[str, Any], location: str
) -> None:
    """The location is where the value sits in the request, without pydantic's union tags."""
    response = http.post(path, json=body)

    assert invalid(response).startswith(f"{location}: ")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/agents", {"name": "a"}, "model"),
        ("/v1/agents", {"model": "m"}, "name"),
        ("/v1/environments", {}, "name"),
        ("/v1/sessions", {"agent": MISSING["agent"]}, "environment_id"),
    ],
    ids=["agent-model", "agent-name", "environment-name", "session-environment_id"],
)
def test_missing_required_field_is_named(
    http: httpx2.Client, path: str, body: dict[str, Any], field: str
) -> None:
    response = http.post(path, json=body)

    assert field in invalid(response)


AGENT_TOOLSET = {"type": "agent_toolset_20260401"}
SERVER = {"type": "url", "name": "docs", "url": "https://mcp.example.com/mcp"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        (
            {
                "tools": [
                    {
                        "type": "custom",
                        "name": "has space",
                        "description": "d",
                        "input_schema": {"type": "object"},
                    }
                ]
            },
            "tools.0",
        ),
        ({"mcp_servers": [SERVER], "tools": [AGENT_TOOLSET]}, "docs"),
        ({"tools": [{"type": "mcp_toolset", "mcp_server_name": "ghost"}]}, "ghost"),
        ({"mcp_servers": [{**SERVER, "url": "file:///etc/passwd"}], "tools": []}, "mcp_servers.0"),
        ({"tools": [AGENT_TOOLSET, AGENT_TOOLSET]}, "tools"),
        (
            {"tools": [{"type": "agent_toolset_20260401", "configs": [{"name": "bash"}, {"name": "bash"}]}]},
            "configs",
        ),
        ({"skills": [{"type": "anthropic", "skill_id": "pdf"}]}, "skills"),
    ],
    ids=[
        "17-metadata-pairs",
        "metadata-value-too-long",
        "custom-tool-name-with-space",
        "mcp-server-without-toolset",
        "mcp-toolset-unknown-server",
        "mcp-server-not-http",
        "agent-toolset-twice",
        "tool-configured-twice",
        "skills",
    ],
)
def test_invalid_agent_is_rejected(http: httpx2.Client, body: dict[str, Any], named: str) -> None:
    response = http.post("/v1/agents", json={"name": "a", "model": MODEL, **body})

    assert named in invalid(response)


@pytest.mark.parametrize(
    ("config", "named"),
    [
        (
            {"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["http://x.com/path"]}},
            "x.com",
        ),
        ({"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["*"]}}, "allowed_hosts"),
        ({"type": "cloud", "packages": {"pip": ["foo; rm -rf /"]}}, "rm -rf"),
        ({"type": "cloud", "packages": {"npm": ["$(curl evil.sh)"]}}, "npm"),
        ({"type": "moon"}, "config"),
    ],
    ids=[
        "host-with-scheme-and-path",
        "bare-wildcard-host",
        "shell-in-pip-package",
        "shell-in-npm-package",
        "unknown-type",
    ],
)
def test_invalid_environment_is_rejected(http: httpx2.Client, config: dict[str, Any], named: str) -> None:
    response = http.post("/v1/environments", json={"name": "e", "config": config})

    assert named in invalid(response)


def test_agent_update_with_null_name_is_rejected(http: httpx2.Client, agent_id: str) -> None:
    response = http.post(f"/v1/agents/{agent_id}", json={"name": None})

    assert "name" in invalid(response)


# --- unknown resources and routes -------------------------------------------------------------


UNKNOWN_ID_REQUESTS: list[tuple[str, str, Any]] = [
    ("GET", f"/v1/agents/{MISSING['agent']}", None),
    ("GET", f"/v1/agents/{MISSING['agent']}?version=1", None),
    ("POST", f"/v1/agents/{MISSING['agent']}", {"name": "x"}),
    ("POST", f"/v1/agents/{MISSING['agent']}/archive", None),
    ("GET", f"/v1/agents/{MISSING['agent']}/versions", None),
    ("GET", f"/v1/environments/{MISSING['environment']}", None),
    ("POST", f"/v1/environments/{MISSING['environment']}", {"name": "x"}),
    ("DELETE", f"/v1/environments/{MISSING['environment']}", None),
    ("POST", f"/v1/environments/{MISSING['environment']}/archive", None),
    ("GET", f"/v1/sessions/{MISSING['session']}", None),
    ("POST", f"/v1/sessions/{MISSING['session']}", {"title": "x"}),
    ("DELETE", f"/v1/sessions/{MISSING['session']}", None),
    ("POST", f"/v1/sessions/{MISSING['session']}/archive", None),
    ("GET", f"/v1/sessions/{MISSING['session']}/events", None),
    ("POST", f"/v1/sessions/{MISSING['session']}/events", {"events": [user_message("hi")]}),
    ("GET", f"/v1/sessions/{MISSING['session']}/events/stream", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    UNKNOWN_ID_REQUESTS,
    ids=[
        f"{method} {path.replace('doesnotexist', '').replace('0', '')}"
        for method, path, _ in UNKNOWN_ID_REQUESTS
    ],
)
def test_unknown_id_is_not_found(http: httpx2.Client, method: str, path: str, body: Any) -> None:
    response = http.request(method, path, json=body)

    message = error_message(response, 404, "not_found_error")
    assert "doesnotexist" in message


def test_sdk_raises_not_found_for_unknown_ids(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.beta.agents.retrieve(MISSING["agent"])
    with pytest.raises(anthropic.NotFoundError):
        client.beta.environments.retrieve(MISSING["environment"])
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.retrieve(MISSING["session"])
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.events.send(MISSING["session"], events=[user_message("hi")])  # type: ignore[list-item]


def test_unknown_agent_version_is_not_found(http: httpx2.Client, agent_id: str) -> None:
    response = http.get(f"/v1/agents/{agent_id}", params={"version": "7"})

    error_message(response, 404, "not_found_error")


def test_unknown_route_is_not_found(http: httpx2.Client) -> None:
    response = http.get("/v1/widgets")

    assert "/v1/widgets" in error_message(response, 404, "not_found_error")


def test_wrong_method_is_not_allowed(http: httpx2.Client) -> None:
    response = http.put("/v1/agents", json={})

    error_message(response, 405, "invalid_request_error")


def test_wrong_method_lists_the_allowed_methods(http: httpx2.Client) -> None:
    """RFC 9110 section 15.5.6: a 405 MUST carry ``Allow`` with the target's methods."""
    response = http.delete("/v1/agents")

    assert response.status_code == 405
    allowed = {method.strip() for method in response.headers.get("allow", "").split(",")}
    assert {"GET", "POST"} <= allowed


# --- size limit -------------------------------------------------------------------------------


def _nine_mib_in_chunks() -> Iterator[bytes]:
    chunk = b" " * (1024 * 1024)
    yield b'{"name": "a", "model": "m", "description": "'
    for _ in range(9):
        yield chunk
    yield b'"}'


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversize_body_is_rejected_and_the_gateway_keeps_serving(
    gateway: ServerProcess, api_key: str, framing: str
) -> None:
    headers = {"x-api-key": api_key, "content-type": "application/json"}
    content: bytes | Iterator[bytes] = (
        b'{"name": "a", "model": "m", "description": "' + b" " * NINE_MIB + b'"}'
        if framing == "content-length"
        else _nine_mib_in_chunks()
    )
    with httpx2.Client(base_url=gateway.url, headers=headers, timeout=60) as http:
        response = http.post("/v1/agents", content=content)

    error_message(response, 413, "request_too_large")
    after = httpx2.get(f"{gateway.url}/v1/agents", headers={"x-api-key": api_key}, params={"limit": 1})
    assert after.status_code == 200, after.text


def test_oversize_body_raises_content_too_large_in_the_sdk(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.ContentTooLargeError) as caught:
        client.beta.agents.create(name="a", model=MODEL, system=" " * NINE_MIB)

    assert caught.value.status_code == 413
    assert caught.value.type == "request_too_large"


# --- query parameters -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/agents", {"limit": "0"}),
        ("/v1/agents", {"limit": "1000"}),
        ("/v1/agents", {"limit": "-1"}),
        ("/v1/agents", {"limit": "ten"}),
        ("/v1/agents", {"page": "garbage"}),
        ("/v1/agents", {"include_archived": "maybe"}),
        ("/v1/agents", {"created_at[gte]": "yesterday"}),
        ("/v1/environments", {"limit": "0"}),
        ("/v1/environments", {"page": "garbage"}),
        ("/v1/sessions", {"limit": "101"}),
        ("/v1/sessions", {"order": "sideways"}),
        ("/v1/sessions", {"agent_version": "one"}),
        ("/v1/sessions", {"page": "garbage"}),
    ],
    ids=lambda value: "&".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value,
)
def test_bad_list_parameters_are_rejected(http: httpx2.Client, path: str, params: dict[str, str]) -> None:
    response = http.get(path, params=params)

    assert next(iter(params)) in invalid(response)


@pytest.mark.parametrize(
    "params",
    [{"limit": "0"}, {"limit": "1001"}, {"order": "sideways"}, {"page": "garbage"}],
    ids=lambda value: "&".join(f"{k}={v}" for k, v in value.items()),
)
def test_bad_event_list_parameters_are_rejected(
    http: httpx2.Client, session_id: str, params: dict[str, str]
) -> None:
    response = http.get(f"/v1/sessions/{session_id}/events", params=params)

    assert next(iter(params)) in invalid(response)


@pytest.mark.parametrize("version", ["0", "-1", "one"])
def test_bad_agent_version_is_rejected(http: httpx2.Client, agent_id: str, version: str) -> None:
    response = http.get(f"/v1/agents/{agent_id}", params={"version": version})

    assert "version" in invalid(response)


# --- session events ---------------------------------------------------------------------------


def test_sending_no_events_is_rejected(http: httpx2.Client, session_id: str) -> None:
    response = http.post(f"/v1/sessions/{session_id}/events", json={"events": []})

    assert "events" in invalid(response)


def test_sending_an_unknown_event_type_is_rejected(http: httpx2.Client, session_id: str) -> None:
    response = http.post(f"/v1/sessions/{session_id}/events", json={"events": [{"type": "user.shout"}]})

    assert "events.0" in invalid(response)


def test_confirming_a_tool_use_that_is_not_pending_is_rejected(http: httpx2.Client, session_id: str) -> None:
    event = {"type": "user.tool_confirmation", "tool_use_id": "sevt_notpending", "result": "allow"}

    response = http.post(f"/v1/sessions/{session_id}/events", json={"events": [event]})

    assert "sevt_notpending" in invalid(response)


def test_custom_tool_result_for_an_unknown_tool_use_is_rejected(http: httpx2.Client, session_id: str) -> None:
    event = {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": "sevt_unknown",
        "content": [{"type": "text", "text": "42"}],
    }

    response = http.post(f"/v1/sessions/{session_id}/events", json={"events": [event]})

    assert "sevt_unknown" in invalid(response)


def test_a_rejected_batch_appends_nothing(http: httpx2.Client, session_id: str) -> None:
    bad = {"type": "user.tool_confirmation", "tool_use_id": "sevt_notpending", "result": "deny"}

    response = http.post(f"/v1/sessions/{session_id}/events", json={"events": [user_message("hi"), bad]})

    invalid(response)
    assert http.get(f"/v1/sessions/{session_id}/events").json()["data"] == []


def test_stream_from_an_unknown_event_id_is_rejected(http: httpx2.Client, session_id: str) -> None:
    response = http.get(
        f"/v1/sessions/{session_id}/events/stream", headers={"last-event-id": "sevt_doesnotexist"}
    )

    assert "sevt_doesnotexist" in invalid(response)


def test_sending_to_an_archived_session_is_rejected(http: httpx2.Client, session_id: str) -> None:
    assert http.post(f"/v1/sessions/{session_id}/archive").status_code == 200

    response = http.post(f"/v1/sessions/{session_id}/events", json={"events": [user_message("hi")]})

    assert "archived" in invalid(response)


# --- session creation -------------------------------------------------------------------------


def test_session_with_an_archived_agent_is_rejected(
    http: httpx2.Client, agent_id: str, environment_id: str
) -> None:
    assert http.post(f"/v1/agents/{agent_id}/archive").status_code == 200

    response = http.post("/v1/sessions", json={"agent": agent_id, "environment_id": environment_id})

    assert "archived" in invalid(response)


def test_session_with_an_archived_environment_is_rejected(
    http: httpx2.Client, agent_id: str, environment_id: str
) -> None:
    assert http.post(f"/v1/environments/{environment_id}/archive").status_code == 200

    response = http.post("/v1/sessions", json={"agent": agent_id, "environment_id": environment_id})

    assert "archived" in invalid(response)


def test_session_with_an_unknown_agent_is_not_found(http: httpx2.Client, environment_id: str) -> None:
    response = http.post("/v1/sessions", json={"agent": MISSING["agent"], "environment_id": environment_id})

    error_message(response, 404, "not_found_error")


def test_session_with_an_unknown_environment_is_not_found(http: httpx2.Client, agent_id: str) -> None:
    response = http.post("/v1/sessions", json={"agent": agent_id, "environment_id": MISSING["environment"]})

    assert MISSING["environment"] in error_message(response, 404, "not_found_error")


def test_session_with_an_unknown_vault_is_not_found(
    http: httpx2.Client, agent_id: str, environment_id: str
) -> None:
    response = http.post(
        "/v1/sessions", json={"agent": agent_id, "environment_id": environment_id, "vault_ids": ["vlt_1"]}
    )

    assert "vlt_1" in error_message(response, 404, "not_found_error")


def test_nul_characters_are_refused(http: httpx2.Client) -> None:
    response = http.post("/v1/agents", json={"name": "a\u0000b", "model": "m"})

    assert "U+0000" in invalid(response)


def test_session_with_an_unknown_agent_version_is_not_found(
    http: httpx2.Client, agent_id: str, environment_id: str
) -> None:
    agent = {"type": "agent", "id": agent_id, "version": 5}

    response = http.post("/v1/sessions", json={"agent": agent, "environment_id": environment_id})

    error_message(response, 404, "not_found_error")


# --- inputs that have crashed handlers (private gateways) -------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/agents", {"limit": "²"}),
        ("/v1/sessions", {"agent_version": "²"}),
        ("/v1/agents", {"page": cursor(10**30)}),
        ("/v1/sessions", {"agent_version": str(10**30)}),
        ("/v1/agents", {"created_at[gte]": "9999-12-31T23:59:59-23:59"}),
        ("/v1/agents", {"created_at[lte]": "0001-01-01T00:00:00+01:00"}),
    ],
    ids=[
        "superscript-limit",
        "superscript-agent_version",
        "huge-cursor",
        "huge-agent_version",
        "after-year-9999",
        "before-year-1",
    ],
)
def test_out_of_range_list_parameters_are_rejected(
    scratch: httpx2.Client, path: str, params: dict[str, str]
) -> None:
    response = scratch.get(path, params=params)

    assert next(iter(params)) in invalid(response)


@pytest.mark.parametrize("version", ["²", str(10**30)], ids=["superscript", "huge"])
def test_out_of_range_agent_version_is_rejected(scratch: httpx2.Client, version: str) -> None:
    agent = scratch.post("/v1/agents", json={"name": "a", "model": MODEL}).json()

    response = scratch.get(f"/v1/agents/{agent['id']}", params={"version": version})

    assert "version" in invalid(response)


def test_huge_pinned_agent_version_is_rejected(scratch: httpx2.Client) -> None:
    agent = scratch.post("/v1/agents", json={"name": "a", "model": MODEL}).json()
    environment = scratch.post("/v1/environments", json={"name": "e"}).json()

    response = scratch.post(
        "/v1/sessions",
        json={
            "agent": {"type": "agent", "id": agent["id"], "version": 10**30},
            "environment_id": environment["id"],
        },
    )

    assert "version" in invalid(response)


def test_deeply_nested_json_is_rejected(scratch: httpx2.Client) -> None:
    response = scratch.post(
        "/v1/agents", content=b"[" * 100_000, headers={"content-type": "application/json"}
    )

    invalid(response)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/agents", b'{"name": "a", "model": "m", "metadata": {"k": "\\ud800"}}'),
        ("/v1/agents", b'{"name": "\\udfff", "model": "m"}'),
        ("/v1/environments", b'{"name": "e", "metadata": {"k": "\\ud800"}}'),
    ],
    ids=["agent-metadata", "agent-name", "environment-metadata"],
)
def test_lone_surrogate_is_rejected_and_nothing_is_stored(
    isolated: httpx2.Client, path: str, body: bytes
) -> None:
    response = isolated.post(path, content=body, headers={"content-type": "application/json"})

    invalid(response)
    listed = isolated.get(path)
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"] == []


def test_lone_surrogate_in_a_session_metadata_update_is_rejected(isolated: httpx2.Client) -> None:
    agent = isolated.post("/v1/agents", json={"name": "a", "model": MODEL}).json()
    environment = isolated.post("/v1/environments", json={"name": "e"}).json()
    session = isolated.post(
        "/v1/sessions", json={"agent": agent["id"], "environment_id": environment["id"]}
    ).json()

    response = isolated.post(
        f"/v1/sessions/{session['id']}",
        content=b'{"metadata": {"k": "\\ud800"}}',
        headers={"content-type": "application/json"},
    )

    invalid(response)
    retrieved = isolated.get(f"/v1/sessions/{session['id']}")
    assert retrieved.status_code == 200, retrieved.text
    assert retrieved.json()["metadata"] == {}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_number_is_rejected_and_nothing_is_stored(isolated: httpx2.Client, constant: str) -> None:
    schema = {"type": "object", "properties": {"x": {"type": "number", "maximum": "CONSTANT"}}}
    tool = {"type": "custom", "name": "t", "description": "d", "input_schema": schema}
    body = json.dumps({"name": "a", "model": "m", "tools": [tool]}).replace('"CONSTANT"', constant)

    response = isolated.post(
        "/v1/agents", content=body.encode(), headers={"content-type": "application/json"}
    )

    invalid(response)
    listed = isolated.get("/v1/agents")
    assert listed.status_code == 200, listed.text
    assert listed.json()["data"] == []


# --- and afterwards -------------------------------------------------------------------------


def test_gateway_still_serves_and_logged_no_traceback(
    client: anthropic.Anthropic, gateway: ServerProcess
) -> None:
    """Runs last in this module: everything above went to the shared gateway without crashing it."""
    agent = client.beta.agents.create(name="still alive", model=MODEL)

    assert client.beta.agents.retrieve(agent.id).name == "still alive"
    logged = "\n".join(gateway.output)
    assert "Traceback" not in logged, logged[logged.index("Traceback") - 2000 :]
