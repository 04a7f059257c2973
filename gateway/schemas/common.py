"""Building blocks shared by the wire schemas."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sandbox_server.egress.validation import InvalidHost, check_allowed_host

MAX_METADATA_PAIRS = 16


class Strict(BaseModel):
    """Request bodies reject unknown fields, so a typo is a 400 rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_PAIRS:
        raise ValueError(f"at most {MAX_METADATA_PAIRS} metadata pairs are allowed")
    for key, item in value.items():
        if not key or len(key) > 64:
            raise ValueError(f"metadata key {key!r} must be 1-64 characters")
        if len(item) > 512:
            raise ValueError(f"metadata value for {key!r} must be at most 512 characters")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata)]


def _check_metadata_patch(value: dict[str, str | None]) -> dict[str, str | None]:
    _check_metadata({k: v for k, v in value.items() if v is not None})
    return value


MetadataPatch = Annotated[dict[str, str | None], AfterValidator(_check_metadata_patch)]
"""An update: a ``None`` value deletes the key."""

Name = Annotated[str, Field(min_length=1, max_length=256)]


def _check_allowed_hosts(hosts: list[str]) -> list[str]:
    # The sandbox's own rules, so the API never stores an entry the sandbox would refuse at start.
    for index, host in enumerate(hosts):
        try:
            check_allowed_host(host)
        except InvalidHost as exc:
            raise ValueError(f"{host!r} (item {index}) is not a valid host: {exc}") from None
    return hosts


AllowedHosts = Annotated[list[str], AfterValidator(_check_allowed_hosts)]
"""An egress allow-list: ``api.example.com``, ``*.example.com``, ``192.0.2.1`` or ``2001:db8::1``."""


class AlwaysAllow(Strict):
    type: Literal["always_allow"]


class AlwaysAsk(Strict):
    type: Literal["always_ask"]


class Auto(Strict):
    type: Literal["auto"]


PermissionPolicy = Annotated[AlwaysAllow | AlwaysAsk | Auto, Field(discriminator="type")]


def apply_metadata_patch(current: dict[str, str], patch: dict[str, str | None]) -> dict[str, str]:
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    _check_metadata(merged)
    return merged
