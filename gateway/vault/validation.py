"""``mcp_oauth_validate``: does a stored MCP OAuth credential still work? Answered by trying it.

The probe is the MCP handshake's first step (``initialize``) against the credential's server
with its access token; only an answer carrying a JSON-RPC ``result`` counts as working. A
server that refuses it with a 401 gets one refresh-token exchange, kept if it succeeds (the
server may have rotated the refresh token), and the new access token is probed again. The
verdict is ``valid``, ``invalid`` (refused, or no access token, and no refresh recovered it) or
``unknown`` (the server or token endpoint could not be reached or failed on its side, or
answered something that says nothing of the token).

What the servers answered is reported with every secret the credential holds scrubbed out, by
the egress proxy's scrubber (every encoding an echo would use), and cut to ``BODY_LIMIT``; a
token endpoint's successful answer is never reported (it holds new tokens). Servers behind a tunnel are not probed (that would resolve their names in
public DNS); such a credential is ``unknown``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import httpx2

from gateway import ids
from gateway.errors import InvalidRequest
from gateway.resources import vaults
from gateway.store.base import Body, Store
from gateway.vault.keyring import KeyRing
from gateway.vault.mcp_auth import RefreshFailed, refreshed, store_refreshed
from sandbox_server.egress.forms import unique, value_forms
from sandbox_server.egress.scrub import Scrub

BODY_LIMIT = 2048
READ_LIMIT = 64 * 1024
PROBE_SECONDS = 15.0
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
REDACTED = b"[redacted]"


@dataclass(frozen=True)
class Reply:
    status_code: int
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Probe:
    ok: bool
    reply: Reply | None
    """What the server answered when it did not work (None: unreachable, or timed out)."""


async def probe(url: str, access_token: str) -> Probe:
    headers = {
        "Authorization": f"Bearer {access_token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    try:
        with anyio.fail_after(PROBE_SECONDS):
            async with httpx2.AsyncClient(timeout=PROBE_SECONDS) as http:
                async with http.stream("POST", url, json=INITIALIZE, headers=headers) as response:
                    body = b""
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) >= READ_LIMIT or _has_result(body):
                            break
                    reply = Reply(
                        response.status_code, response.headers.get("content-type", ""), body[:READ_LIMIT]
                    )
    except (httpx2.HTTPError, httpx2.InvalidURL, UnicodeError, TimeoutError):
        return Probe(False, None)
    ok = 200 <= reply.status_code < 300 and _has_result(reply.body)
    return Probe(ok, None if ok else reply)


def _has_result(body: bytes) -> bool:
    """A JSON-RPC ``result``, in a JSON body or an SSE stream's data lines."""
    text = body.decode("utf-8", "replace")
    candidates = [line[5:] for line in text.splitlines() if line.startswith("data:")] or [text]
    for candidate in candidates:
        try:
            message = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(message, dict) and "result" in message:
            return True
    return False


def _tunnelled(url: str, tunnel_domain: str) -> bool:
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    return host == tunnel_domain or host.endswith("." + tunnel_domain)


async def validate(
    store: Store, keyring: KeyRing, vault_id: str, credential_id: str, tunnel_domain: str = ""
) -> Body:
    credential = await vaults.get_credential(store, vault_id, credential_id)
    auth = credential["auth"]
    if auth["type"] != "mcp_oauth":
        raise InvalidRequest(
            f"credential {credential_id} is {auth['type']}: only mcp_oauth credentials can be validated"
        )
    secrets = vaults.unseal(keyring, credential)
    result: Body = {
        "type": "vault_credential_validation",
        "credential_id": credential_id,
        "vault_id": vault_id,
        "has_refresh_token": bool(secrets.get("refresh_token")),
        "mcp_probe": None,
        "refresh": None,
        "validated_at": ids.timestamp(),
    }
    refresh = auth.get("refresh")
    scrub = _scrubber(secrets)
    token = secrets.get("access_token")
    if not token:
        return {**result, "status": "invalid"}
    if tunnel_domain and _tunnelled(auth["mcp_server_url"], tunnel_domain):
        return {**result, "status": "unknown"}  # not probed: see the module's docstring
    first = await probe(auth["mcp_server_url"], token)
    if first.ok:
        return {**result, "status": "valid"}
    result["mcp_probe"] = {"method": "initialize", "http_response": _captured(first.reply, scrub)}
    if first.reply is None or first.reply.status_code != 401:
        return {
            **result,
            "status": "invalid" if first.reply and first.reply.status_code == 403 else "unknown",
        }
    if refresh is None or not secrets.get("refresh_token"):
        return {
            **result,
            "status": "invalid",
            "refresh": {"status": "no_refresh_token", "http_response": None},
        }
    try:
        answer = await refreshed(refresh, secrets)
    except RefreshFailed as exc:
        response = exc.response
        if response is None:
            return {
                **result,
                "status": "unknown",
                "refresh": {"status": "connect_error", "http_response": None},
            }
        reply = Reply(response.status_code, response.headers.get("content-type", ""), response.content)
        # A 2xx that was still refused (no access_token) holds new tokens: never reported.
        shown = None if response.is_success else _captured(reply, scrub)
        transient = response.status_code >= 500 or response.status_code == 429
        return {
            **result,
            "status": "unknown" if transient else "invalid",
            "refresh": {"status": "failed", "http_response": shown},
        }
    scrub = _scrubber({**secrets, **{k: v for k, v in answer.items() if isinstance(v, str)}})
    fresh = await store_refreshed(store, keyring, credential, secrets, answer)
    result["refresh"] = {"status": "succeeded", "http_response": None}
    second = await probe(auth["mcp_server_url"], fresh)
    if second.ok:
        return {**result, "status": "valid", "mcp_probe": None}
    result["mcp_probe"] = {"method": "initialize", "http_response": _captured(second.reply, scrub)}
    refused = second.reply is not None and second.reply.status_code in (401, 403)
    return {**result, "status": "invalid" if refused else "unknown"}


def _scrubber(secrets: dict[str, str]) -> Scrub:
    """Every secret out of a text, in every form an echo could take: the egress proxy's scrubber
    (``sandbox_server.egress.scrub``: raw in any case, JSON, HTML, percent and line-break
    escapes undone, hex, base64 at every alignment, so ``Basic base64(id:secret)`` too)."""
    forms = [form for value in secrets.values() if value for form in value_forms(value.encode(), REDACTED)]
    return Scrub(tuple(unique(forms)))


def _captured(reply: Reply | None, scrub: Scrub) -> Body | None:
    if reply is None:
        return None
    text = scrub.apply(reply.body).decode("utf-8", "replace")
    return {
        "status_code": reply.status_code,
        "content_type": scrub.apply_text(reply.content_type),
        "body": text[:BODY_LIMIT],
        "body_truncated": len(text) > BODY_LIMIT or len(reply.body) >= READ_LIMIT,
    }
