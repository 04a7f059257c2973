"""What every answer from ``/v1/memory_stores`` must parse as, and helpers for its tests."""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager
from typing import Any

import anthropic
import httpx2
from anthropic.types.beta import BetaManagedAgentsDeletedMemoryStore, BetaManagedAgentsMemoryStore
from anthropic.types.beta.memory_stores import (
    BetaManagedAgentsDeletedMemory,
    BetaManagedAgentsMemory,
    BetaManagedAgentsMemoryListItem,
    BetaManagedAgentsMemoryVersion,
)

from tests.support.processes import ServerProcess
from tests.support.strict_answers import StrictAnswers

ERROR_EXTRAS = {"memory_path_conflict_error": {"conflicting_memory_id"}}
KEYS = "/v1/organizations/api_keys"


def expected(method: str, parts: list[str]) -> tuple[Any, bool]:
    """The SDK type of an answer from ``/v1/<parts>`` and whether it comes as a page of them."""
    if len(parts) == 1:
        return BetaManagedAgentsMemoryStore, method == "GET"
    if len(parts) == 2:
        return (
            BetaManagedAgentsDeletedMemoryStore if method == "DELETE" else BetaManagedAgentsMemoryStore
        ), False
    if parts[2] == "archive":
        return BetaManagedAgentsMemoryStore, False
    if parts[2] == "memories":
        if len(parts) == 3:
            return (
                BetaManagedAgentsMemoryListItem if method == "GET" else BetaManagedAgentsMemory
            ), method == "GET"
        return (BetaManagedAgentsDeletedMemory if method == "DELETE" else BetaManagedAgentsMemory), False
    assert parts[2] == "memory_versions", parts
    return BetaManagedAgentsMemoryVersion, len(parts) == 3


def strict_answers() -> AbstractContextManager[StrictAnswers]:
    """``StrictAnswers.checking`` for the memory stores family."""
    return StrictAnswers.checking("memory_stores", expected, ERROR_EXTRAS)


def sha256(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def error_of(exc: anthropic.APIStatusError) -> dict[str, Any]:
    """The ``error`` object of a refused request."""
    body = exc.response.json()
    assert body["type"] == "error", body
    error: dict[str, Any] = body["error"]
    return error


def create_key(gateway: ServerProcess, admin_key: str, role: str) -> dict[str, Any]:
    """A new API key of ``role`` (its record, with the token under ``key``)."""
    response = httpx2.post(
        gateway.url + KEYS,
        headers={"x-api-key": admin_key},
        json={"name": f"memory {role}", "role": role},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created
