"""The admin audit log, through the API and ``tether audit verify --admin``: every change to an
administrative resource is recorded before it runs and its result after, under the caller's
key, with no request or response body (so no secret) ever in it; the log is hash-chained,
readable by admin keys only, and verifies offline and through the API.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest

from tests.conftest import gateway_data_dir
from tests.support.processes import ServerProcess
from tests.test_audit import _audit
from tests.test_deployments import unique

LOG = "/v1/tether/admin_log"


def _log(gateway: ServerProcess, key: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    page = None
    while True:
        params = {"limit": 1000, **({"page": page} if page else {})}
        listed = httpx2.get(gateway.url + LOG, headers={"x-api-key": key}, params=params, timeout=30)
        assert listed.status_code == 200, listed.text
        events += listed.json()["data"]
        page = listed.json()["next_page"]
        if not page:
            return events


def _pairs(events: list[dict[str, Any]], path_part: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request, result) of every recorded request whose path contains ``path_part``."""
    results = {e["request_id"]: e for e in events if e["type"] == "admin.result"}
    return [(e, results[e["id"]]) for e in events if e["type"] == "admin.request" and path_part in e["path"]]


def test_changes_are_recorded_with_their_caller_and_never_their_secrets(
    gateway: ServerProcess, api_key: str, client: anthropic.Anthropic, environment: Any
) -> None:
    created = httpx2.post(
        gateway.url + "/v1/organizations/api_keys",
        headers={"x-api-key": api_key},
        json={"name": unique("dev"), "role": "developer"},
        timeout=30,
    ).json()
    developer = anthropic.Anthropic(base_url=gateway.url, api_key=created["key"], max_retries=0)
    agent = developer.beta.agents.create(name=unique("audited"), model="claude-sonnet-4-6")
    secret = "s3cret-" + unique("token")
    vault = client.beta.vaults.create(display_name=unique("vault"))
    client.beta.vaults.credentials.create(
        vault.id,
        auth={"type": "static_bearer", "token": secret, "mcp_server_url": "https://mcp.example.com/mcp"},  # type: ignore[typeddict-item]
    )
    tunnel = client.beta.tunnels.create()
    revealed = client.post(f"/v1/tunnels/{tunnel.id}/reveal_token", cast_to=object)
    token = revealed["tunnel_token"] if isinstance(revealed, dict) else ""
    with pytest.raises(anthropic.BadRequestError):
        developer.beta.agents.create(name="", model="claude-sonnet-4-6")
    session = developer.beta.sessions.create(agent=agent.id, environment_id=environment.id)

    events = _log(gateway, api_key)

    [(key_request, key_result)] = _pairs(events, "/v1/organizations/api_keys")[-1:]
    assert key_request["actor"] == {"role": "admin", "key_id": None}  # a configured key
    assert (key_request["method"], key_result["status"], key_result["resource_id"]) == (
        "POST",
        200,
        created["id"],
    )
    agent_pairs = [p for p in _pairs(events, "/v1/agents") if p[0]["actor"]["key_id"] == created["id"]]
    assert [(r["status"], r["resource_id"]) for _, r in agent_pairs] == [(200, agent.id), (400, None)]
    assert [p[1]["status"] for p in _pairs(events, f"/v1/tunnels/{tunnel.id}/reveal_token")] == [200]
    assert _pairs(events, vault.id), "the credential's creation is recorded"
    assert not _pairs(events, session.id) and not _pairs(events, "/v1/sessions")  # work, not administration
    text = json.dumps(events)
    assert secret not in text and created["key"] not in text and token and token not in text

    refused = httpx2.get(gateway.url + LOG, headers={"x-api-key": created["key"]}, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    developer.close()


def test_the_admin_log_verifies_offline_and_through_the_api(gateway: ServerProcess, api_key: str) -> None:
    anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0).beta.agents.create(
        name=unique("chained"), model="claude-sonnet-4-6"
    )
    integrity = httpx2.get(
        gateway.url + LOG + "/integrity", headers={"x-api-key": api_key}, timeout=30
    ).json()
    assert integrity["ok"] is True and integrity["events"] >= 2

    offline = _audit("verify", "--admin", "--data-dir", str(gateway_data_dir(gateway)))
    online = _audit("verify", "--admin", "--gateway", gateway.url, "--api-key", api_key)
    for checked in (offline, online):
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout.startswith("admin_log: chain intact over ")

    neither = _audit("verify", "--data-dir", str(gateway_data_dir(gateway)))
    both = _audit("verify", "sesn_x", "--admin", "--data-dir", str(gateway_data_dir(gateway)))
    assert neither.returncode == both.returncode == 2 and "--admin" in neither.stderr
