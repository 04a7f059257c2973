"""HTTP routes for ``/v1/vaults`` and ``/v1/vaults/{id}/credentials``. Secrets go in, never out."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.api.bodies import parse
from gateway.api.pagination import bool_param, page_body, page_params
from gateway.api.routing import endpoint
from gateway.api.state import state
from gateway.resources import vaults
from gateway.schemas.vaults import CredentialCreate, CredentialUpdate, VaultCreate, VaultUpdate
from gateway.vault import validation


async def create_vault(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, VaultCreate, gateway.settings.max_body_bytes)
    return JSONResponse(await vaults.create_vault(gateway.store, body))


async def list_vaults(request: Request) -> JSONResponse:
    cursor, limit = page_params(request)
    page = await state(request).store.list_resources(
        vaults.VAULT, cursor=cursor, limit=limit, include_archived=bool_param(request, "include_archived")
    )
    return JSONResponse(page_body(page))


async def retrieve_vault(request: Request) -> JSONResponse:
    return JSONResponse(await vaults.get_vault(state(request).store, request.path_params["vault_id"]))


async def update_vault(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, VaultUpdate, gateway.settings.max_body_bytes)
    return JSONResponse(await vaults.update_vault(gateway.store, request.path_params["vault_id"], body))


async def archive_vault(request: Request) -> JSONResponse:
    return JSONResponse(await vaults.archive_vault(state(request).store, request.path_params["vault_id"]))


async def delete_vault(request: Request) -> JSONResponse:
    return JSONResponse(await vaults.delete_vault(state(request).store, request.path_params["vault_id"]))


async def create_credential(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, CredentialCreate, gateway.settings.max_body_bytes)
    created = await vaults.create_credential(
        gateway.store, gateway.keyring, request.path_params["vault_id"], body
    )
    return JSONResponse(vaults.render(created))


async def list_credentials(request: Request) -> JSONResponse:
    store = state(request).store
    vault_id = request.path_params["vault_id"]
    await vaults.get_vault(store, vault_id)
    cursor, limit = page_params(request)
    page = await store.list_resources(
        vaults.CREDENTIAL,
        cursor=cursor,
        limit=limit,
        include_archived=bool_param(request, "include_archived"),
        equals={"vault_id": vault_id},
    )
    return JSONResponse(page_body(page, vaults.render))


async def retrieve_credential(request: Request) -> JSONResponse:
    params = request.path_params
    credential = await vaults.get_credential(
        state(request).store, params["vault_id"], params["credential_id"]
    )
    return JSONResponse(vaults.render(credential))


async def update_credential(request: Request) -> JSONResponse:
    gateway = state(request)
    body = await parse(request, CredentialUpdate, gateway.settings.max_body_bytes)
    params = request.path_params
    updated = await vaults.update_credential(
        gateway.store, gateway.keyring, params["vault_id"], params["credential_id"], body
    )
    return JSONResponse(vaults.render(updated))


async def archive_credential(request: Request) -> JSONResponse:
    params = request.path_params
    archived = await vaults.archive_credential(
        state(request).store, params["vault_id"], params["credential_id"]
    )
    return JSONResponse(vaults.render(archived))


async def delete_credential(request: Request) -> JSONResponse:
    params = request.path_params
    return JSONResponse(
        await vaults.delete_credential(state(request).store, params["vault_id"], params["credential_id"])
    )


async def validate_credential(request: Request) -> JSONResponse:
    """``mcp_oauth_validate``: the credential tried against its server (``vault.validation``)."""
    gateway = state(request)
    params = request.path_params
    return JSONResponse(
        await validation.validate(
            gateway.store,
            gateway.keyring,
            params["vault_id"],
            params["credential_id"],
            tunnel_domain=gateway.settings.tunnel_base_domain,
        )
    )


routes = [
    endpoint("/v1/vaults", post=create_vault, get=list_vaults),
    endpoint("/v1/vaults/{vault_id}", get=retrieve_vault, post=update_vault, delete=delete_vault),
    endpoint("/v1/vaults/{vault_id}/archive", post=archive_vault),
    endpoint("/v1/vaults/{vault_id}/credentials", post=create_credential, get=list_credentials),
    endpoint(
        "/v1/vaults/{vault_id}/credentials/{credential_id}",
        get=retrieve_credential,
        post=update_credential,
        delete=delete_credential,
    ),
    endpoint("/v1/vaults/{vault_id}/credentials/{credential_id}/archive", post=archive_credential),
    endpoint(
        "/v1/vaults/{vault_id}/credentials/{credential_id}/mcp_oauth_validate", post=validate_credential
    ),
]
