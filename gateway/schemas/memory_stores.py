"""Memory store wire shapes (``BetaManagedAgentsMemoryStore``, ``...Memory``, ``...MemoryVersion``
and their deleted forms), their request bodies, and the rules for memory paths.

A memory's path becomes a file under ``/mnt/memory/<store>/`` in sandboxes, so it is held to the
API's rules before anything is stored: it starts with ``/``, has 1 to 20 segments, none empty,
``.`` or ``..``, no control or format characters nor U+2028/U+2029, is in Unicode NFC and at
most 1,024 bytes. ``path_problem`` says what is wrong with one, for a 400 that names it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from gateway.schemas.common import Metadata, MetadataPatch, Strict

Body = dict[str, Any]
MAX_NAME_CHARS = 255
MAX_DESCRIPTION_CHARS = 1024
MAX_PATH_BYTES = 1024
MAX_SEGMENTS = 20
MAX_MEMORY_BYTES = 102_400
"""The SDK's limit on one memory's ``content`` (100 kB of UTF-8)."""
VIEWS = ("basic", "full")
OPERATIONS = ("created", "modified", "deleted")
ACTOR_FIELDS = {
    "api_actor": "api_key_id",
    "session_actor": "session_id",
    "user_actor": "user_id",
    "service_account_actor": "service_account_id",
}
"""``BetaManagedAgentsActor``: each variant's ``type`` and the one id it carries."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$", re.ASCII)
_SEPARATORS = frozenset("\u2028\u2029")


def path_problem(path: str, *, prefix: bool = False) -> str | None:
    """Why ``path`` is not a memory path (or, with ``prefix``, a ``path_prefix``: ``/`` or a
    path ending in ``/``); None when it is one."""
    if not path.startswith("/"):
        return "must start with '/'"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"must be at most {MAX_PATH_BYTES} bytes of UTF-8"
    for char in path:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Cs") or char in _SEPARATORS:
            return f"may not contain U+{ord(char):04X} (a control, format or separator character)"
    if unicodedata.normalize("NFC", path) != path:
        return "must be in Unicode Normalization Form C"
    if prefix:
        if not path.endswith("/"):
            return "must end with '/' (it matches whole segments)"
        segments = path[1:-1].split("/") if path != "/" else []
    else:
        segments = path[1:].split("/")
    if len(segments) > MAX_SEGMENTS:
        return f"has {len(segments)} segments; at most {MAX_SEGMENTS} are allowed"
    for segment in segments:
        if segment in ("", ".", ".."):
            return f"may not have an {'empty' if not segment else repr(segment)} segment"
    return None


def check_path(path: str, field: str = "path", *, prefix: bool = False) -> str:
    """``path`` if valid, else ``ValueError`` naming the field and the path."""
    problem = path_problem(path, prefix=prefix)
    if problem is not None:
        raise ValueError(f"{field}: {path!r} {problem}")
    return path


def sha256_problem(value: str) -> str | None:
    if not _SHA256.match(value):
        return f"{value!r} is not a SHA-256 digest (64 lowercase hexadecimal characters)"
    return None


def _check_name(value: str) -> str:
    if not 1 <= len(value) <= MAX_NAME_CHARS:
        raise ValueError(f"must be 1 to {MAX_NAME_CHARS} characters, not {len(value)}")
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise ValueError("may not contain control characters")
    return value


def _check_sha256(value: str) -> str:
    problem = sha256_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _check_memory_path(value: str) -> str:
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r} {problem}")
    return value


StoreName = Annotated[str, AfterValidator(_check_name)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)]
MemoryPath = Annotated[str, AfterValidator(_check_memory_path)]
Sha256 = Annotated[str, AfterValidator(_check_sha256)]


class MemoryStoreCreate(Strict):
    name: StoreName
    description: Description = ""
    metadata: Metadata = Field(default_factory=dict)


class MemoryStoreUpdate(Strict):
    """A null field is left as it is, like an omitted one."""

    name: StoreName | None = None
    description: Description | None = None
    metadata: MetadataPatch | None = None


class Precondition(Strict):
    """``BetaManagedAgentsPreconditionParam``: the memory's current content must hash to this."""

    type: Literal["content_sha256"]
    content_sha256: Sha256


class MemoryCreate(Strict):
    path: MemoryPath
    content: str
    """Required, and a string: ``""`` is an empty memory."""


class MemoryUpdate(Strict):
    """A null ``content`` or ``path`` is left as it is, like an omitted one."""

    content: str | None = None
    path: MemoryPath | None = None
    precondition: Precondition | None = None


def check_actor(actor: Body | None) -> Body | None:
    """One of ``BetaManagedAgentsActor`` exactly (it goes out on the wire as ``created_by``)."""
    if actor is None:
        return None
    field = ACTOR_FIELDS.get(str(actor.get("type")))
    if field is None or set(actor) != {"type", field} or not isinstance(actor[field], str):
        raise ValueError(f"not an actor: {actor!r} (types: {', '.join(ACTOR_FIELDS)})")
    return actor


def api_actor(api_key_id: str | None) -> Body | None:
    """The caller by key; a configured key has no id, so its writes record no author."""
    return {"type": "api_actor", "api_key_id": api_key_id} if api_key_id else None


def session_actor(session_id: str) -> Body:
    return {"type": "session_actor", "session_id": session_id}


def memory_store_body(
    store_id: str, name: str, description: str, metadata: dict[str, str], created_at: str
) -> Body:
    """The stored document is exactly the wire shape."""
    return {
        "type": "memory_store",
        "id": store_id,
        "name": name,
        "description": description,
        "metadata": metadata,
        "created_at": created_at,
        "updated_at": created_at,
        "archived_at": None,
    }


def memory_body(store_id: str, memory_id: str, entry: Body, view: str) -> Body:
    """A live memory from its index entry; ``content`` only with ``view=full``."""
    return {
        "type": "memory",
        "id": memory_id,
        "memory_store_id": store_id,
        "path": entry["path"],
        "content": entry["content"] if view == "full" else None,
        "content_sha256": entry["content_sha256"],
        "content_size_bytes": entry["content_size_bytes"],
        "memory_version_id": entry["memory_version_id"],
        "created_at": entry["created_at"],
        "updated_at": entry["updated_at"],
    }


def memory_prefix_body(path: str) -> Body:
    return {"type": "memory_prefix", "path": path}


def digest(content: str) -> str:
    """``content_sha256``: of the UTF-8 bytes, with no normalisation."""
    return hashlib.sha256(content.encode()).hexdigest()


def memory_version_body(
    version_id: str,
    store_id: str,
    memory_id: str,
    operation: str,
    path: str,
    content: str | None,
    created_at: str,
    created_by: Body | None,
) -> Body:
    """``content`` (and so its digest and size) is None on a ``deleted`` version."""
    return {
        "type": "memory_version",
        "id": version_id,
        "memory_store_id": store_id,
        "memory_id": memory_id,
        "operation": operation,
        "path": path,
        "content": content,
        "content_sha256": digest(content) if content is not None else None,
        "content_size_bytes": len(content.encode()) if content is not None else None,
        "created_at": created_at,
        "created_by": created_by,
        "redacted_at": None,
        "redacted_by": None,
    }


def version_view(body: Body, view: str) -> Body:
    return body if view == "full" else {**body, "content": None}


def deleted_memory_store(store_id: str) -> Body:
    return {"type": "memory_store_deleted", "id": store_id}


def deleted_memory(memory_id: str) -> Body:
    return {"type": "memory_deleted", "id": memory_id}
