"""The last hop for MCP credentials: an ``Authorization`` header for one server, for one session.

Looks through the session's vaults (in the order attached) for a ``static_bearer`` or
``mcp_oauth`` credential whose ``mcp_server_url`` is the server's URL. An expired OAuth
access token is refreshed with the credential's refresh settings and stored again,
encrypted. Neither the harness's events nor the model ever see the value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2

from gateway import ids
from gateway.resources import vaults
from gateway.store.base import Body, Store
from gateway.vault.keyring import KeyRing

REFRESH_MARGIN = timedelta(seconds=30)


class RefreshFailed(Exception):
    """The token endpoint refused or could not be reached; the message never holds a secret.
    ``response`` is the endpoint's answer when it gave one (None: it could not be reached)."""

    def __init__(self, message: str, response: httpx2.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


@dataclass(frozen=True)
class ServerAuth:
    headers: dict[str, str]
    credential_id: str | None = None
    vault_id: str | None = None


def same_server(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


async def find_credential(store: Store, vault_ids: list[str], server_url: str) -> Body | None:
    for vault_id in vault_ids:
        for credential in await vaults.credentials_of(store, vault_id, include_archived=False):
            auth = credential["auth"]
            if auth["type"] in ("static_bearer", "mcp_oauth") and same_server(
                auth["mcp_server_url"], server_url
            ):
                return credential
    return None


async def auth_for(store: Store, keyring: KeyRing, vault_ids: list[str], server_url: str) -> ServerAuth:
    credential = await find_credential(store, vault_ids, server_url)
    if credential is None:
        return ServerAuth({})
    secrets = vaults.unseal(keyring, credential)
    if credential["auth"]["type"] == "static_bearer":
        token = secrets["token"]
    else:
        token = await _fresh_access_token(store, keyring, credential, secrets)
    return ServerAuth({"Authorization": f"Bearer {token}"}, credential["id"], credential["vault_id"])


def _expired(auth: Body) -> bool:
    expires = auth.get("expires_at")
    if not expires:
        return False
    return datetime.fromisoformat(expires.replace("Z", "+00:00")) - REFRESH_MARGIN <= datetime.now(UTC)


async def _fresh_access_token(
    store: Store, keyring: KeyRing, credential: Body, secrets: dict[str, str]
) -> str:
    auth = credential["auth"]
    if not _expired(auth):
        return secrets["access_token"]
    refresh = auth.get("refresh")
    if refresh is None or "refresh_token" not in secrets:
        raise RefreshFailed("the access token has expired and the credential has no refresh settings")
    token = await refreshed(refresh, secrets)
    return await store_refreshed(store, keyring, credential, secrets, token)


async def store_refreshed(
    store: Store, keyring: KeyRing, credential: Body, secrets: dict[str, str], token: dict[str, Any]
) -> str:
    """Keep a refresh's new tokens (sealed) and expiry on the credential; the new access token.

    Merged into the credential as stored now, and only if its refresh token is still the one
    used: an update made while the token endpoint answered (new refresh settings, say) wins."""
    used = secrets.get("refresh_token")
    expires_at = (
        ids.timestamp(datetime.now(UTC) + timedelta(seconds=float(token["expires_in"])))
        if isinstance(token.get("expires_in"), int | float)
        else None
    )

    def keep(body: Body) -> Body:
        current = vaults.unseal(keyring, body)
        if current.get("refresh_token") != used:
            return body
        current["access_token"] = token["access_token"]
        if token.get("refresh_token"):
            current["refresh_token"] = token["refresh_token"]
        public = {**body["auth"], "expires_at": expires_at}
        if expires_at is None:
            public.pop("expires_at")
        sealed = vaults.seal(keyring, body["id"], current)
        return {**body, "auth": public, vaults.SECRET_FIELD: sealed, "updated_at": ids.timestamp()}

    await store.update(vaults.CREDENTIAL, credential["id"], keep)
    secrets["access_token"] = token["access_token"]
    return str(token["access_token"])


async def refreshed(refresh: Body, secrets: dict[str, str]) -> dict[str, Any]:
    """RFC 6749 section 6: ``grant_type=refresh_token`` with the configured client authentication."""
    form = {"grant_type": "refresh_token", "refresh_token": secrets["refresh_token"]}
    for optional in ("scope", "resource"):
        if refresh.get(optional):
            form[optional] = refresh[optional]
    auth_type = refresh["token_endpoint_auth"]["type"]
    basic: httpx2.BasicAuth | None = None
    if auth_type == "client_secret_basic":
        basic = httpx2.BasicAuth(refresh["client_id"], secrets.get("client_secret", ""))
    else:
        form["client_id"] = refresh["client_id"]
        if auth_type == "client_secret_post":
            form["client_secret"] = secrets.get("client_secret", "")
    try:
        async with httpx2.AsyncClient(timeout=15) as http:
            if basic is None:
                response = await http.post(refresh["token_endpoint"], data=form)
            else:
                response = await http.post(refresh["token_endpoint"], data=form, auth=basic)
    except (httpx2.HTTPError, httpx2.InvalidURL, UnicodeError) as exc:
        raise RefreshFailed(f"the token endpoint could not be reached ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise RefreshFailed(f"the token endpoint answered HTTP {response.status_code}", response)
    try:
        token = response.json()
    except json.JSONDecodeError:
        raise RefreshFailed("the token endpoint did not answer JSON", response) from None
    if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
        raise RefreshFailed("the token endpoint's answer has no access_token", response)
    return token
