"""Vault and credential request bodies (mirrors ``vault_*_params`` and ``vaults/credential_*_params``).

Secret fields are accepted here and nowhere else: responses are built from the stored
public part, never from these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from gateway.schemas.common import AllowedHosts, Metadata, MetadataPatch, Name, Strict
from sandbox_server.egress.validation import check_secret_name

Secret = Annotated[str, Field(min_length=1, max_length=16_384)]


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host")
    return url


class VaultCreate(Strict):
    display_name: Name
    metadata: Metadata = Field(default_factory=dict)


class VaultUpdate(Strict):
    display_name: Name | None = None
    metadata: MetadataPatch | None = None


class TokenEndpointNone(Strict):
    type: Literal["none"]


class TokenEndpointBasic(Strict):
    type: Literal["client_secret_basic"]
    client_secret: Secret


class TokenEndpointPost(Strict):
    type: Literal["client_secret_post"]
    client_secret: Secret


TokenEndpointAuth = Annotated[
    TokenEndpointNone | TokenEndpointBasic | TokenEndpointPost, Field(discriminator="type")
]


class OAuthRefresh(Strict):
    client_id: Annotated[str, Field(min_length=1, max_length=1024)]
    refresh_token: Secret
    token_endpoint: str
    token_endpoint_auth: TokenEndpointAuth
    resource: str | None = None
    scope: str | None = None

    _endpoint = field_validator("token_endpoint")(classmethod(lambda cls, v: _http_url(v)))


class MCPOAuthCreate(Strict):
    type: Literal["mcp_oauth"]
    mcp_server_url: str
    access_token: Secret
    expires_at: datetime | None = None
    refresh: OAuthRefresh | None = None

    _url = field_validator("mcp_server_url")(classmethod(lambda cls, v: _http_url(v)))


class StaticBearerCreate(Strict):
    type: Literal["static_bearer"]
    mcp_server_url: str
    token: Secret

    _url = field_validator("mcp_server_url")(classmethod(lambda cls, v: _http_url(v)))


class InjectionLocation(Strict):
    header: bool | None = None
    body: bool | None = None


class UnrestrictedNetworking(Strict):
    type: Literal["unrestricted"]


class LimitedNetworking(Strict):
    type: Literal["limited"]
    allowed_hosts: Annotated[AllowedHosts, Field(min_length=1, max_length=100)]


CredentialNetworking = Annotated[UnrestrictedNetworking | LimitedNetworking, Field(discriminator="type")]


class EnvironmentVariableCreate(Strict):
    type: Literal["environment_variable"]
    secret_name: str
    secret_value: Secret
    networking: CredentialNetworking
    injection_location: InjectionLocation | None = None

    @field_validator("secret_name")
    @classmethod
    def _name(cls, name: str) -> str:
        # The sandbox's own rule, so it will set every variable the API accepts.
        return check_secret_name(name)


AuthCreate = Annotated[
    MCPOAuthCreate | StaticBearerCreate | EnvironmentVariableCreate, Field(discriminator="type")
]


class CredentialCreate(Strict):
    auth: AuthCreate
    display_name: Annotated[str, Field(max_length=256)] | None = None
    metadata: Metadata = Field(default_factory=dict)


class MCPOAuthUpdate(Strict):
    type: Literal["mcp_oauth"]
    access_token: Secret | None = None
    expires_at: datetime | None = None
    refresh: OAuthRefresh | None = None


class StaticBearerUpdate(Strict):
    type: Literal["static_bearer"]
    token: Secret | None = None


class EnvironmentVariableUpdate(Strict):
    type: Literal["environment_variable"]
    secret_value: Secret | None = None
    networking: CredentialNetworking | None = None
    injection_location: InjectionLocation | None = None


AuthUpdate = Annotated[
    MCPOAuthUpdate | StaticBearerUpdate | EnvironmentVariableUpdate, Field(discriminator="type")
]


class CredentialUpdate(Strict):
    auth: AuthUpdate | None = None
    display_name: Annotated[str, Field(max_length=256)] | None = None
    metadata: MetadataPatch | None = None
