"""``mcp_oauth_validate``: does a stored MCP OAuth credential still work? Answered by trying it.

The probe is the MCP handshake's first step (``initialize``) against the credential's server
with its access token. A server that refuses it (401/403) gets one refresh-token exchange, kept
if it succeeds (the server may have rotated the refresh token), and the new access token is
probed again. The verdict is ``valid``, ``invalid`` (refused, or no access token, and no
refresh recovered it) or ``unknown`` (the server or token endpoint could not be reached, or
answered something else). What the servers answered is reported with every secret the
credential holds scrubbed out and the body cut to ``BODY_LIMIT``; no secret is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx2

from gateway import ids
from gateway.errors import InvalidRequest
from gateway.resources import vaults
from gateway.store.base import Body, Store
from gateway.vault.keyring import KeyRing
from gateway.vault.mcp_auth import RefreshFailed, refreshed, store_refreshed

BODY_LIMIT = 2048
PROBE_TIMEOUT = 15.0
REFUSED = (401, 403)
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "tether-credential-check", "version": "1"},
    },
}


@dataclass(frozen=True)
class Probe:
    ok: bool
    response: httpx2.Response | None
    """The server's answer when the probe failed with one (None: unreachable)."""


async def probe(url: str, access_token: str) -> Probe:
    headers = {
        "Authorization": f"Bearer {access_token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    try:
        async with httpx2.AsyncClient(timeout=PROBE_TIMEOUT) as http:
            response = await http.post(url, json=INITIALIZE, headers=headers)
            await response.aread()
    except httpx2.HTTPError:
        return Probe(False, None)
    return Probe(200 <= response.status_code < 300, None if response.is_success else response)


async def validate(store: Store, keyring: KeyRing, vault_id: str, credential_id: str) -> Body:
    credential = await vaults.get_credential(store, vault_id, credential_id)
    auth = credential["auth"]
    if auth["type"] != "mcp_oauth":
        raise InvalidRequest(
            f"credential {credential_id} is {auth['type']}: only mcp_oauth credentials can be validated"
        )
    secrets = vaults.unseal(keyring, credential)
    can_refresh = auth.get("refresh") is not None and bool(secrets.get("refresh_token"))
    result: Body = {
        "type": "vault_credential_validation",
        "credential_id": credential_id,
        "vault_id": vault_id,
        "has_refresh_token": bool(secrets.get("refresh_token")),
        "mcp_probe": None,
        "refresh": None,
        "validated_at": ids.timestamp(),
    }
    scrub = _scrubber(secrets)
    token = secrets.get("access_token")
    if not token:
        return {**result, "status": "invalid"}
    first = await probe(auth["mcp_server_url"], token)
    if first.ok:
        return {**result, "status": "valid"}
    result["mcp_probe"] = {"method": "initialize", "http_response": _captured(first.response, scrub)}
    if first.response is None or first.response.status_code not in REFUSED:
        return {**result, "status": "unknown"}  # unreachable, or an answer that says nothing of the token
    if not can_refresh:
        return {
            **result,
            "status": "invalid",
            "refresh": {"status": "no_refresh_token", "http_response": None},
        }
    try:
        token_answer = await refreshed(auth["refresh"], secrets)
    except RefreshFailed as exc:
        if exc.response is None:
            return {
                **result,
                "status": "unknown",
                "refresh": {"status": "connect_error", "http_response": None},
            }
        failed = {"status": "failed", "http_response": _captured(exc.response, scrub)}
        return {**result, "status": "invalid", "refresh": failed}
    scrub = _scrubber({**secrets, **{k: v for k, v in token_answer.items() if isinstance(v, str)}})
    fresh = await store_refreshed(store, keyring, credential, secrets, token_answer)
    result["refresh"] = {"status": "succeeded", "http_response": None}
    second = await probe(auth["mcp_server_url"], fresh)
    if second.ok:
        return {**result, "status": "valid", "mcp_probe": None}
    result["mcp_probe"] = {"method": "initialize", "http_response": _captured(second.response, scrub)}
    refused = second.response is not None and second.response.status_code in REFUSED
    return {**result, "status": "invalid" if refused else "unknown"}


def _scrubber(secrets: dict[str, str]) -> Any:
    values = sorted(
        (v for v in secrets.values() if isinstance(v, str) and len(v) >= 4), key=len, reverse=True
    )

    def scrub(text: str) -> str:
        for value in values:
            text = text.replace(value, "[redacted]")
        return text

    return scrub


def _captured(response: httpx2.Response | None, scrub: Any) -> Body | None:
    if response is None:
        return None
    text = scrub(response.content.decode("utf-8", "replace"))
    return {
        "status_code": response.status_code,
        "content_type": response.headers.get("content-type", ""),
        "body": text[:BODY_LIMIT],
        "body_truncated": len(text) > BODY_LIMIT,
    }
