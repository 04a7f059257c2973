"""``vaults.credentials.mcp_oauth_validate`` through the SDK: a stored MCP OAuth credential is
tried against its server (``initialize``), refreshed once when the server refuses it, and
judged ``valid``, ``invalid`` or ``unknown``, with what the servers said reported and no secret
in the answer.

The MCP server here is a loopback stand-in that accepts exactly the tokens a test allows;
the token endpoint is ``test_vaults``' (it hands out ``fresh-1``, ``fresh-2``, ...).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus

import anthropic
import pytest
from anthropic.types.beta.vaults.beta_managed_agents_credential_validation import (
    BetaManagedAgentsCredentialValidation as Validation,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.serving import bind_socket, socket_url
from tests.support import oauth
from tests.support.oauth import LoopbackServer, TokenEndpoint


class GuardedServer(LoopbackServer):
    """``POST /mcp``: an ``initialize`` answer for an allowed bearer token, else a 401 that
    echoes the token it was given (so the test can see the echo is scrubbed)."""

    def __init__(self) -> None:
        super().__init__([Route("/mcp", self.mcp, methods=["POST"])])
        self.allowed: set[str] = set()
        self.url = self.base_url + "/mcp"

    async def mcp(self, request: Request) -> JSONResponse:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token == "rpc-error":  # a 200 that is no handshake: says nothing of the token
            return JSONResponse(
                {"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "Unauthorized"}}
            )
        if token not in self.allowed:
            echoes = {
                "seen": token,
                "form": quote_plus(token),
                "b64": base64.b64encode(token.encode()).decode(),
            }
            return JSONResponse(
                {"error": "invalid_token", **echoes}, status_code=401, headers={"x-echo": token}
            )
        result = {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "serverInfo": {"name": "guarded", "version": "1"},
        }
        return JSONResponse({"jsonrpc": "2.0", "id": 1, "result": result})


token_endpoint = oauth.token_endpoint


@pytest.fixture
def guarded() -> Iterator[GuardedServer]:
    server = GuardedServer()
    server.start()
    yield server
    server.stop()


def _credential(
    client: anthropic.Anthropic, url: str, access_token: str, refresh: Any = None
) -> tuple[str, str]:
    vault = client.beta.vaults.create(display_name="validated")
    auth: dict[str, Any] = {"type": "mcp_oauth", "mcp_server_url": url, "access_token": access_token}
    if refresh is not None:
        auth["refresh"] = refresh
    credential = client.beta.vaults.credentials.create(vault.id, auth=auth)  # type: ignore[arg-type]
    return vault.id, credential.id


def _validate(client: anthropic.Anthropic, vault_id: str, credential_id: str) -> tuple[Validation, str]:
    raw = client.beta.vaults.credentials.with_raw_response.mcp_oauth_validate(
        credential_id, vault_id=vault_id
    )
    text = raw.http_response.text
    return Validation.model_validate_json(text, strict=True), text


def _refresh(endpoint: TokenEndpoint) -> dict[str, Any]:
    return {
        "client_id": "tether-client",
        "refresh_token": "rt-" + secrets.token_hex(8),
        "token_endpoint": endpoint.url,
        "token_endpoint_auth": {"type": "none"},
    }


def test_a_working_token_is_valid(client: anthropic.Anthropic, guarded: GuardedServer) -> None:
    token = "at-" + secrets.token_hex(8)
    guarded.allowed.add(token)
    vault_id, credential_id = _credential(client, guarded.url, token)
    verdict, text = _validate(client, vault_id, credential_id)
    assert (verdict.status, verdict.mcp_probe, verdict.refresh, verdict.has_refresh_token) == (
        "valid",
        None,
        None,
        False,
    )
    assert (verdict.credential_id, verdict.vault_id) == (credential_id, vault_id) and token not in text


def test_a_refused_token_is_refreshed_kept_and_then_valid(
    client: anthropic.Anthropic, guarded: GuardedServer, token_endpoint: TokenEndpoint
) -> None:
    guarded.allowed.add("fresh-1")
    refresh = _refresh(token_endpoint)
    vault_id, credential_id = _credential(client, guarded.url, "stale-" + secrets.token_hex(8), refresh)

    verdict, text = _validate(client, vault_id, credential_id)

    assert verdict.status == "valid" and verdict.refresh is not None and verdict.refresh.status == "succeeded"
    assert verdict.mcp_probe is None and verdict.has_refresh_token
    assert refresh["refresh_token"] not in text and "fresh-1" not in text
    again, _ = _validate(client, vault_id, credential_id)  # the refreshed token was kept
    assert again.status == "valid" and again.refresh is None and len(token_endpoint.calls) == 1


def test_a_refused_token_without_refresh_is_invalid_and_the_echo_is_scrubbed(
    client: anthropic.Anthropic, guarded: GuardedServer
) -> None:
    token = "leaky/" + secrets.token_hex(8) + "+="  # differs raw, URL-encoded and base64
    vault_id, credential_id = _credential(client, guarded.url, token)
    verdict, text = _validate(client, vault_id, credential_id)
    assert verdict.status == "invalid"
    assert verdict.refresh is not None and verdict.refresh.status == "no_refresh_token"
    assert verdict.mcp_probe is not None and verdict.mcp_probe.method == "initialize"
    answer = verdict.mcp_probe.http_response
    assert answer is not None and answer.status_code == 401 and "[redacted]" in answer.body
    for echo in (token, quote_plus(token), base64.b64encode(token.encode()).decode()):
        assert echo not in text


def test_what_the_probe_cannot_judge_is_unknown(client: anthropic.Anthropic, guarded: GuardedServer) -> None:
    """A 200 that is no handshake says nothing of the token; a server behind a tunnel is not
    probed at all (its name must never reach public DNS)."""
    vault_id, credential_id = _credential(client, guarded.url, "rpc-error")
    verdict, _ = _validate(client, vault_id, credential_id)
    assert verdict.status == "unknown" and verdict.mcp_probe is not None
    assert verdict.mcp_probe.http_response is not None and verdict.mcp_probe.http_response.status_code == 200

    port = guarded.url.split(":")[-1].split("/")[0]
    vault_id, credential_id = _credential(
        client, f"http://crm.abcd.tunnels.tether.internal:{port}/mcp", "t0ken"
    )
    verdict, _ = _validate(client, vault_id, credential_id)
    assert (verdict.status, verdict.mcp_probe) == ("unknown", None)  # no probe was even tried


def test_a_refused_refresh_is_invalid_and_an_unreachable_server_unknown(
    client: anthropic.Anthropic, guarded: GuardedServer, token_endpoint: TokenEndpoint
) -> None:
    token_endpoint.failing = True
    vault_id, credential_id = _credential(client, guarded.url, "stale", _refresh(token_endpoint))
    verdict, _ = _validate(client, vault_id, credential_id)
    assert verdict.status == "invalid" and verdict.refresh is not None and verdict.refresh.status == "failed"
    assert verdict.refresh.http_response is not None and verdict.refresh.http_response.status_code == 400

    closed = bind_socket("127.0.0.1", 0)
    url = socket_url(closed) + "/mcp"
    closed.close()  # nothing listens there now
    vault_id, credential_id = _credential(client, url, "any-token")
    verdict, _ = _validate(client, vault_id, credential_id)
    assert verdict.status == "unknown"
    assert verdict.mcp_probe is not None and verdict.mcp_probe.http_response is None


def test_only_mcp_oauth_credentials_are_validated(client: anthropic.Anthropic) -> None:
    vault = client.beta.vaults.create(display_name="static")
    credential = client.beta.vaults.credentials.create(
        vault.id,
        auth={
            "type": "static_bearer",
            "token": "t0ken-value",
            "mcp_server_url": "https://mcp.example.com/mcp",
        },  # type: ignore[typeddict-item]
    )
    with pytest.raises(anthropic.BadRequestError, match="only mcp_oauth"):
        client.beta.vaults.credentials.mcp_oauth_validate(credential.id, vault_id=vault.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.vaults.credentials.mcp_oauth_validate("vcrd_missing", vault_id=vault.id)
