"""Environment request bodies and their resolved wire shape (``BetaEnvironment``)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from gateway.schemas.common import AllowedHosts, Metadata, MetadataPatch, Name, Strict

_PACKAGE = re.compile(r"^[A-Za-z0-9@][A-Za-z0-9@._+/:=<>~!^,\[\]-]*$")
PACKAGE_MANAGERS = ("apt", "cargo", "gem", "go", "npm", "pip")


class Unrestricted(Strict):
    type: Literal["unrestricted"]


class Limited(Strict):
    type: Literal["limited"]
    allowed_hosts: AllowedHosts | None = None
    allow_mcp_servers: bool | None = None
    allow_package_managers: bool | None = None


Networking = Annotated[Unrestricted | Limited, Field(discriminator="type")]


class Packages(Strict):
    type: Literal["packages"] | None = None
    apt: list[str] = Field(default_factory=list)
    cargo: list[str] = Field(default_factory=list)
    gem: list[str] = Field(default_factory=list)
    go: list[str] = Field(default_factory=list)
    npm: list[str] = Field(default_factory=list)
    pip: list[str] = Field(default_factory=list)

    @field_validator(*PACKAGE_MANAGERS)
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        for name in names:
            if len(name) > 214 or not _PACKAGE.match(name):
                raise ValueError(f"{name!r} is not a valid package specifier")
        return names


class CloudConfig(Strict):
    type: Literal["cloud"]
    networking: Networking | None = None
    packages: Packages | None = None


class SelfHostedConfig(Strict):
    type: Literal["self_hosted"]


Config = Annotated[CloudConfig | SelfHostedConfig, Field(discriminator="type")]


class EnvironmentCreate(Strict):
    name: Name
    config: Config | None = None
    description: Annotated[str, Field(max_length=2048)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    scope: Literal["organization", "account"] | None = None


class EnvironmentUpdate(Strict):
    name: Name | None = None
    config: Config | None = None
    description: Annotated[str, Field(max_length=2048)] | None = None
    metadata: MetadataPatch | None = None
    scope: Literal["organization", "account"] | None = None


def resolve_config(config: CloudConfig | SelfHostedConfig | None) -> dict[str, Any]:
    """Defaults: a cloud sandbox with unrestricted networking and no extra packages."""
    if isinstance(config, SelfHostedConfig):
        return {"type": "self_hosted"}
    config = config or CloudConfig(type="cloud")
    networking: dict[str, Any]
    if isinstance(config.networking, Limited):
        networking = {
            "type": "limited",
            "allowed_hosts": config.networking.allowed_hosts or [],
            "allow_mcp_servers": bool(config.networking.allow_mcp_servers),
            "allow_package_managers": bool(config.networking.allow_package_managers),
        }
    else:
        networking = {"type": "unrestricted"}
    packages = config.packages or Packages()
    return {
        "type": "cloud",
        "networking": networking,
        "packages": {"type": "packages", **{m: list(getattr(packages, m)) for m in PACKAGE_MANAGERS}},
    }
