"""Session resources as the SDK sends them: files and repositories placed in the session's sandbox.

``sessions.create(resources=…)`` and ``sessions.resources.add`` take the SDK's params; the
wire shape answered is ``BetaManagedAgentsFileResource`` / ``…GitHubRepositoryResource``. A
repository's ``authorization_token`` is write-only: it is sealed apart from the resource and
never rendered. A memory store is attached at ``sessions.create`` only (``…MemoryStoreResource``,
no id of its own): mounted at ``/mnt/memory/<slug of its name>`` (``memory_mount_path``).

Where a resource may go (``check_mount_path``): strictly below ``/workspace`` (placed in the
workspace, the agent may change it) or below ``/mnt/session`` (read-only to the agent), in
normal form, never onto a place Tether keeps for itself.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from gateway.schemas.common import Strict

WORKSPACE = "/workspace"
SESSION_AREA = "/mnt/session"
SKILLS_AREA = f"{SESSION_AREA}/skills"
"""Where the agent's skills are placed (``/mnt/session/skills/<name>``); no resource goes there."""
MEMORY_AREA = "/mnt/memory"
"""Where attached memory stores are mounted, one directory each (``gateway.tools.memory_sync``)."""
RESERVED = (f"{WORKSPACE}/.tether-session", SKILLS_AREA)
MAX_MOUNT_PATH_CHARS = 1024
MAX_RESOURCES = 100
MAX_MEMORY_STORES = 8
MAX_SLUG_CHARS = 64
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def check_mount_path(path: str) -> str:
    """``path`` if it may hold a resource; ``ValueError`` naming the rule otherwise."""
    if not path.startswith("/"):
        raise ValueError(f"mount_path must be absolute, not {path!r}")
    if _UNPRINTABLE.search(path) or len(path) > MAX_MOUNT_PATH_CHARS:
        raise ValueError("mount_path must be printable and at most 1024 characters")
    if posixpath.normpath(path) != path or "/../" in path + "/" or path.startswith("//"):
        raise ValueError(f"mount_path must be in normal form (no '..', '.', '//' or trailing '/'): {path!r}")
    if any(len(part.encode()) > 255 for part in path.split("/")):
        raise ValueError("mount_path components must be at most 255 bytes")
    if not any(path.startswith(top + "/") for top in (WORKSPACE, SESSION_AREA)):
        raise ValueError(f"mount_path must be below {WORKSPACE} or {SESSION_AREA}, not {path!r}")
    for reserved in RESERVED:
        if _under(path, reserved):
            raise ValueError(f"mount_path {path!r} is inside {reserved}, which Tether keeps for itself")
    return path


def memory_slug(name: str, taken: Sequence[str] = ()) -> str:
    """The directory a store named ``name`` is mounted as: lower-case letters, digits, ``.``,
    ``_`` and ``-`` (anything else becomes ``-``), unique among ``taken`` (``-2``, ``-3``…)."""
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")[:MAX_SLUG_CHARS].strip("-.")
    slug = slug or "memory"
    unique, number = slug, 2
    while unique in taken:
        unique, number = f"{slug}-{number}", number + 1
    return unique


MountPath = Annotated[str, Field(min_length=1), AfterValidator(check_mount_path)]


class BranchCheckout(Strict):
    type: Literal["branch"]
    name: Annotated[str, Field(min_length=1, max_length=255)]

    @field_validator("name")
    @classmethod
    def _branch_name(cls, name: str) -> str:
        if _UNPRINTABLE.search(name) or ".." in name or name.startswith(("-", "/")) or " " in name:
            raise ValueError(f"not a branch name: {name!r}")
        return name


class CommitCheckout(Strict):
    type: Literal["commit"]
    sha: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]


Checkout = Annotated[BranchCheckout | CommitCheckout, Field(discriminator="type")]


class FileResourceParams(Strict):
    type: Literal["file"]
    file_id: Annotated[str, Field(min_length=1, max_length=128)]
    mount_path: MountPath | None = None


class GitHubRepositoryResourceParams(Strict):
    type: Literal["github_repository"]
    url: Annotated[str, Field(min_length=1, max_length=1024)]
    authorization_token: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    checkout: Checkout | None = None
    mount_path: MountPath | None = None


class MemoryStoreResourceParams(Strict):
    type: Literal["memory_store"]
    memory_store_id: Annotated[str, Field(min_length=1, max_length=128)]
    access: Literal["read_write", "read_only"] | None = None
    instructions: Annotated[str, Field(max_length=4096)] | None = None


ResourceParams = Annotated[
    FileResourceParams | GitHubRepositoryResourceParams | MemoryStoreResourceParams,
    Field(discriminator="type"),
]


class ResourceAdd(Strict):
    """``sessions.resources.add``: the SDK adds files only."""

    type: Literal["file"]
    file_id: Annotated[str, Field(min_length=1, max_length=128)]
    mount_path: MountPath | None = None


class ResourceUpdate(Strict):
    """``sessions.resources.update``: a new token (repositories only)."""

    authorization_token: Annotated[str, Field(min_length=1, max_length=4096)]
