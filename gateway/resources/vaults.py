"""Vaults and their credentials.

A credential is stored as its public wire shape plus ``_secret``: the secret parts
(token, access/refresh tokens, client secret, secret value) as JSON, AES-GCM encrypted
under the keyring with the credential id as associated data. ``render`` drops every
``_`` field, so no response can carry a secret.
"""

from __future__ import annotations

import json
from typing import Any

from gateway import ids
from gateway.errors import InvalidRequest, NotFound
from gateway.resources import common
from gateway.schemas.common import apply_metadata_patch
from gateway.schemas.vaults import (
    CredentialCreate,
    CredentialUpdate,
    EnvironmentVariableCreate,
    EnvironmentVariableUpdate,
    MCPOAuthCreate,
    MCPOAuthUpdate,
    OAuthRefresh,
    StaticBearerCreate,
    StaticBearerUpdate,
    VaultCreate,
    VaultUpdate,
)
from gateway.store.base import Body, Store
from gateway.vault.keyring import KeyRing

VAULT = "vault"
CREDENTIAL = "vault_credential"
VAULT_PREFIX = "vlt"
CREDENTIAL_PREFIX = "vcrd"
SECRET_FIELD = "_secret"
MAX_CREDENTIALS = 1000


render = common.public


# Vaults -------------------------------------------------------------------------------


async def create_vault(store: Store, request: VaultCreate) -> Body:
    moment = ids.timestamp()
    body: Body = {
        "type": "vault",
        "id": ids.new_id(VAULT_PREFIX),
        "display_name": request.display_name,
        "metadata": request.metadata,
        "created_at": moment,
        "updated_at": moment,
        "archived_at": None,
    }
    await store.insert(VAULT, body)
    return body


async def get_vault(store: Store, vault_id: str) -> Body:
    return await common.fetch(store, VAULT, vault_id)


async def update_vault(store: Store, vault_id: str, request: VaultUpdate) -> Body:
    def apply(current: Body) -> Body:
        updated = dict(current)
        if "display_name" in request.model_fields_set:
            if request.display_name is None:
                raise InvalidRequest("display_name: may not be null")
            updated["display_name"] = request.display_name
        if "metadata" in request.model_fields_set:
            updated["metadata"] = apply_metadata_patch(current["metadata"], request.metadata or {})
        if updated != current:
            updated["updated_at"] = ids.timestamp()
        return updated

    body = await store.update(VAULT, vault_id, apply)
    if body is None:
        raise NotFound(VAULT, vault_id)
    return body


async def archive_vault(store: Store, vault_id: str) -> Body:
    return await common.archive(store, VAULT, vault_id)


async def delete_vault(store: Store, vault_id: str) -> Body:
    await get_vault(store, vault_id)
    for credential in await credentials_of(store, vault_id):
        await store.delete(CREDENTIAL, credential["id"])
    await store.delete(VAULT, vault_id)
    return {"id": vault_id, "type": "vault_deleted"}


async def require_usable(store: Store, vault_ids: list[str], field: str = "vault_ids") -> None:
    """Sessions may only attach vaults that exist and are not archived."""
    for index, vault_id in enumerate(vault_ids):
        body = await store.get(VAULT, vault_id)
        if body is None:
            raise NotFound(VAULT, vault_id)
        if body.get("archived_at"):
            raise InvalidRequest(f"{field}.{index}: vault {vault_id} is archived")


# Credentials --------------------------------------------------------------------------


async def credentials_of(store: Store, vault_id: str, include_archived: bool = True) -> list[Body]:
    page = await store.list_resources(
        CREDENTIAL,
        cursor=None,
        limit=MAX_CREDENTIALS,
        include_archived=include_archived,
        equals={"vault_id": vault_id},
        order="asc",
    )
    return page.items


def _public_auth(auth: Any) -> Body:
    if isinstance(auth, StaticBearerCreate):
        return {"type": "static_bearer", "mcp_server_url": auth.mcp_server_url}
    if isinstance(auth, MCPOAuthCreate):
        public: Body = {"type": "mcp_oauth", "mcp_server_url": auth.mcp_server_url}
        if auth.expires_at is not None:
            public["expires_at"] = ids.timestamp(auth.expires_at)
        if auth.refresh is not None:
            public["refresh"] = _public_refresh(auth.refresh)
        return public
    assert isinstance(auth, EnvironmentVariableCreate)
    location = auth.injection_location
    return {
        "type": "environment_variable",
        "secret_name": auth.secret_name,
        "networking": auth.networking.model_dump(),
        "injection_location": {
            "header": True if location is None or location.header is None else location.header,
            "body": False if location is None or location.body is None else location.body,
        },
    }


def _public_refresh(refresh: OAuthRefresh) -> Body:
    public: Body = {
        "client_id": refresh.client_id,
        "token_endpoint": refresh.token_endpoint,
        "token_endpoint_auth": {"type": refresh.token_endpoint_auth.type},
    }
    if refresh.resource is not None:
        public["resource"] = refresh.resource
    if refresh.scope is not None:
        public["scope"] = refresh.scope
    return public


def _secret_parts(auth: Any) -> dict[str, str]:
    if isinstance(auth, StaticBearerCreate):
        return {"token": auth.token}
    if isinstance(auth, MCPOAuthCreate):
        parts = {"access_token": auth.access_token}
        if auth.refresh is not None:
            parts.update(_refresh_secrets(auth.refresh))
        return parts
    assert isinstance(auth, EnvironmentVariableCreate)
    return {"secret_value": auth.secret_value}


def _refresh_secrets(refresh: OAuthRefresh) -> dict[str, str]:
    parts = {"refresh_token": refresh.refresh_token}
    client_secret = getattr(refresh.token_endpoint_auth, "client_secret", None)
    if client_secret:
        parts["client_secret"] = client_secret
    return parts


def seal(keyring: KeyRing, credential_id: str, secrets: dict[str, str]) -> str:
    return keyring.encrypt(json.dumps(secrets).encode(), credential_id)


def unseal(keyring: KeyRing, credential: Body) -> dict[str, str]:
    secrets: dict[str, str] = json.loads(keyring.decrypt(credential[SECRET_FIELD], credential["id"]))
    return secrets


async def create_credential(store: Store, keyring: KeyRing, vault_id: str, request: CredentialCreate) -> Body:
    vault = await get_vault(store, vault_id)
    if vault.get("archived_at"):
        raise InvalidRequest(f"vault {vault_id} is archived")
    moment = ids.timestamp()
    credential_id = ids.new_id(CREDENTIAL_PREFIX)
    body: Body = {
        "type": "vault_credential",
        "id": credential_id,
        "vault_id": vault_id,
        "display_name": request.display_name,
        "auth": _public_auth(request.auth),
        "metadata": request.metadata,
        "created_at": moment,
        "updated_at": moment,
        "archived_at": None,
        SECRET_FIELD: seal(keyring, credential_id, _secret_parts(request.auth)),
    }
    await store.insert(CREDENTIAL, body)
    return body


async def get_credential(store: Store, vault_id: str, credential_id: str) -> Body:
    body = await store.get(CREDENTIAL, credential_id)
    if body is None or body["vault_id"] != vault_id:
        raise NotFound("credential", credential_id)
    return body


async def update_credential(
    store: Store, keyring: KeyRing, vault_id: str, credential_id: str, request: CredentialUpdate
) -> Body:
    await get_credential(store, vault_id, credential_id)

    def apply(current: Body) -> Body:
        updated = dict(current)
        fields = request.model_fields_set
        if "display_name" in fields:
            updated["display_name"] = request.display_name
        if "metadata" in fields:
            updated["metadata"] = apply_metadata_patch(current["metadata"], request.metadata or {})
        if request.auth is not None:
            if request.auth.type != current["auth"]["type"]:
                raise InvalidRequest(f"auth.type: a {current['auth']['type']} credential cannot change type")
            secrets = unseal(keyring, current)
            updated["auth"] = _apply_auth(dict(current["auth"]), secrets, request.auth)
            updated[SECRET_FIELD] = seal(keyring, credential_id, secrets)
        if updated != current:
            updated["updated_at"] = ids.timestamp()
        return updated

    body = await store.update(CREDENTIAL, credential_id, apply)
    if body is None:
        raise NotFound("credential", credential_id)
    return body


def _apply_auth(public: Body, secrets: dict[str, str], change: Any) -> Body:
    """Apply an auth update in place on the public part and the secrets (which the caller reseals)."""
    if isinstance(change, StaticBearerUpdate):
        if change.token is not None:
            secrets["token"] = change.token
    elif isinstance(change, MCPOAuthUpdate):
        if change.access_token is not None:
            secrets["access_token"] = change.access_token
        if "expires_at" in change.model_fields_set:
            if change.expires_at is None:
                public.pop("expires_at", None)
            else:
                public["expires_at"] = ids.timestamp(change.expires_at)
        if change.refresh is not None:
            public["refresh"] = _public_refresh(change.refresh)
            secrets.pop("client_secret", None)
            secrets.update(_refresh_secrets(change.refresh))
    elif isinstance(change, EnvironmentVariableUpdate):
        if change.secret_value is not None:
            secrets["secret_value"] = change.secret_value
        if change.networking is not None:
            public["networking"] = change.networking.model_dump()
        if change.injection_location is not None:
            for place in ("header", "body"):
                value = getattr(change.injection_location, place)
                if value is not None:
                    public["injection_location"][place] = value
    return public


async def archive_credential(store: Store, vault_id: str, credential_id: str) -> Body:
    await get_credential(store, vault_id, credential_id)
    return await common.archive(store, CREDENTIAL, credential_id)


async def delete_credential(store: Store, vault_id: str, credential_id: str) -> Body:
    await get_credential(store, vault_id, credential_id)
    await store.delete(CREDENTIAL, credential_id)
    return {"id": credential_id, "type": "vault_credential_deleted"}


async def rotate_master_key(store: Store, keyring: KeyRing) -> int:
    """Re-encrypt every credential under a fresh key, then forget keys nothing uses."""
    keyring.add_key()
    page = await store.list_resources(CREDENTIAL, cursor=None, limit=1_000_000, include_archived=True)
    for credential in page.items:
        secrets = unseal(keyring, credential)
        sealed = seal(keyring, credential["id"], secrets)
        await store.update(CREDENTIAL, credential["id"], common.with_field(SECRET_FIELD, sealed))
    keyring.drop_unused({keyring.active})
    return len(page.items)
