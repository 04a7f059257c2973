"""Skills: uploaded folders with a SKILL.md, kept as immutable versions on disk.

A version's files live in ``DATA_DIR/skills/<skill_id>/<version>/`` (``version_dir``), the
uploaded top-level directory left out, so that directory holds ``SKILL.md`` itself. Version ids
are Unix epoch microseconds as strings (``"1759178010641129"``), the form the API uses under
the ``skills-2025-10-02`` beta, growing with every version of a skill.

Two collections: ``skill`` (the wire ``BetaSkill`` plus internal ``_name``, ``_versions`` and
``_last_version``, the highest id ever given, so a deleted version's id is never reused) and
``skill_version`` (one document per version, keyed ``<skill_id>@<version>`` because ids are
unique across kinds). The skill's ``_versions`` list is the authority on which versions exist,
changed in one atomic update, so ``latest_version_id`` always names a version and a skill
always holds at least one (as ``BetaSkill`` documents): its last version cannot be deleted,
only the skill. Files go to disk before any record names them, and records go before files.

Anthropic's own skills (``pdf``, ``xlsx``, ``docx``, ``pptx`` ...) are not served by Tether.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from gateway import ids
from gateway.errors import Conflict, InvalidRequest, NotFound, TetherError
from gateway.resources import common
from gateway.resources.skill_uploads import Manifest, SkillFolder
from gateway.schemas.skills import skill_body, skill_version_body
from gateway.store.base import Body, Store

log = logging.getLogger("tether.skills")

KIND = "skill"
VERSION_KIND = "skill_version"
ID_PREFIX = "skill"
LATEST = "latest"
ANTHROPIC_SKILLS = frozenset({"pdf", "xlsx", "docx", "pptx"})
_SKILL_ID = re.compile(r"^skill_[A-Za-z0-9]{1,64}$", re.ASCII)
_VERSION = re.compile(r"^[0-9]{1,20}$", re.ASCII)


class AnthropicSkill(NotFound):
    """An Anthropic-provided skill id: it exists upstream, but Tether serves custom skills only."""

    def __init__(self, skill_id: str) -> None:
        TetherError.__init__(
            self,
            f"skill {skill_id!r} is an Anthropic-provided skill; Tether serves custom skills only "
            "(upload the skill's folder with skills.create to use one)",
        )


@dataclass(frozen=True)
class SkillVersionRef:
    """One resolved version, for placing its files into a sandbox and naming it in a prompt."""

    skill_id: str
    version: str
    name: str
    description: str
    directory: str
    """The top-level directory to place the files under: the skill's ``name``, as the API
    mounts it (``version_dir`` holds what goes inside it)."""


def skills_dir(data_dir: Path) -> Path:
    return data_dir / "skills"


def version_dir(data_dir: Path, skill_id: str, version: str) -> Path:
    """Where a version's files are: built only from an id and a version of the checked forms."""
    if not _SKILL_ID.match(skill_id) or not _VERSION.match(version):
        raise ValueError(f"not a skill version: {skill_id!r} {version!r}")
    return skills_dir(data_dir) / skill_id / version


def _skill_dir(data_dir: Path, skill_id: str) -> Path:
    if not _SKILL_ID.match(skill_id):
        raise ValueError(f"not a skill id: {skill_id!r}")
    return skills_dir(data_dir) / skill_id


def _version_key(skill_id: str, version: str) -> str:
    return f"{skill_id}@{version}"


def _epoch_micros() -> int:
    return time.time_ns() // 1000


def _newest(versions: list[str]) -> str:
    return max(versions, key=int)


def render(body: Body) -> Body:
    return common.public(body)


def render_version(body: Body) -> Body:
    return skill_version_body(
        body["skill_id"], body["version"], body["name"], body["description"], body["created_at"]
    )


async def get(store: Store, skill_id: str) -> Body:
    if skill_id in ANTHROPIC_SKILLS:
        raise AnthropicSkill(skill_id)
    return await common.fetch(store, KIND, skill_id)


def check_version_id(version: str, allow_latest: bool = False) -> None:
    if allow_latest and version == LATEST:
        return
    if not _VERSION.match(version):
        also = f" or '{LATEST}'" if allow_latest else ""
        raise InvalidRequest(
            f"version: {version!r} is not a version id (digits, e.g. '1759178010641129'){also}"
        )


async def get_version(store: Store, skill_id: str, version: str) -> Body:
    """``version`` is an id or ``latest``; a version the skill no longer lists is not found."""
    check_version_id(version, allow_latest=True)
    skill = await get(store, skill_id)
    wanted = skill["latest_version_id"] if version == LATEST else version
    body = await store.get(VERSION_KIND, _version_key(skill_id, wanted))
    if body is None or wanted not in skill["_versions"]:
        raise NotFound(f"version {wanted!r} of skill", skill_id)
    return body


async def resolve(store: Store, skill_id: str, version: str | None) -> SkillVersionRef:
    """The version an agent names (``None`` or ``latest``: the newest); NotFound, or
    InvalidRequest for a malformed version."""
    body = await get_version(store, skill_id, version or LATEST)
    return SkillVersionRef(skill_id, body["version"], body["name"], body["description"], body["name"])


def _version_document(skill_id: str, version: str, manifest: Manifest, created_at: str) -> Body:
    return {
        "id": _version_key(skill_id, version),
        "skill_id": skill_id,
        "version": version,
        "name": manifest.skill_md.name,
        "description": manifest.skill_md.description,
        "created_at": created_at,
        "_directory": manifest.directory,
        "_files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
        "_total_bytes": manifest.total_bytes,
    }


async def create(store: Store, data_dir: Path, folder: SkillFolder, display_name: str | None) -> Body:
    """A new skill from a staged upload; on any failure nothing is left, on disk or stored."""
    manifest = await anyio.to_thread.run_sync(folder.seal)
    skill_id = ids.new_id(ID_PREFIX)
    directory = _skill_dir(data_dir, skill_id)
    version = await anyio.to_thread.run_sync(folder.keep, directory, _epoch_micros())
    moment = ids.timestamp()
    document = _version_document(skill_id, version, manifest, moment)
    body = skill_body(skill_id, display_name or manifest.skill_md.name, version, moment)
    body.update({"_name": manifest.skill_md.name, "_versions": [version], "_last_version": version})
    try:
        await store.insert(VERSION_KIND, document)
        await store.insert(KIND, body)
    except BaseException:
        with anyio.CancelScope(shield=True):  # a cancelled request must clean up too
            await anyio.to_thread.run_sync(_remove, directory)
            await _forget(store, document["id"])
        raise
    log.info("skill %s (%s) created at version %s", skill_id, body["_name"], version)
    return body


async def create_version(store: Store, data_dir: Path, skill_id: str, folder: SkillFolder) -> Body:
    """A new immutable version of an existing skill; its SKILL.md must keep the skill's name."""
    skill = await get(store, skill_id)
    manifest = await anyio.to_thread.run_sync(folder.seal)
    if manifest.skill_md.name != skill["_name"]:
        raise InvalidRequest(
            f"SKILL.md line {manifest.skill_md.name_line}: name: {manifest.skill_md.name!r} differs "
            f"from the skill's name {skill['_name']!r}; every version of a skill keeps its name"
        )
    first_choice = max(_epoch_micros(), int(skill["_last_version"]) + 1)
    directory = _skill_dir(data_dir, skill_id)
    version = await anyio.to_thread.run_sync(folder.keep, directory, first_choice)
    moment = ids.timestamp()
    document = _version_document(skill_id, version, manifest, moment)

    def attach(current: Body) -> Body:
        versions = [*current["_versions"], version]
        return {
            **current,
            "_versions": versions,
            "_last_version": _newest([current["_last_version"], version]),
            "latest_version_id": _newest(versions),
            "updated_at": moment,
        }

    attached: Body | None = None
    try:
        await store.insert(VERSION_KIND, document)
        attached = await store.update(KIND, skill_id, attach)
    finally:
        if attached is None:  # failed, or the skill was deleted meanwhile
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_remove, directory / version)
                await _forget(store, document["id"])
    if attached is None:
        raise NotFound(KIND, skill_id)
    log.info("skill %s: version %s created", skill_id, version)
    return document


async def delete_version(store: Store, data_dir: Path, skill_id: str, version: str) -> None:
    check_version_id(version)
    await get(store, skill_id)

    def detach(current: Body) -> Body:
        versions = [v for v in current["_versions"] if v != version]
        if len(versions) == len(current["_versions"]):
            raise NotFound(f"version {version!r} of skill", skill_id)
        if not versions:
            raise Conflict(
                f"version {version!r} is the only version of skill {skill_id}; a skill holds at "
                "least one version, so delete the skill instead"
            )
        return {
            **current,
            "_versions": versions,
            "latest_version_id": _newest(versions),
            "updated_at": ids.timestamp(),
        }

    if await store.update(KIND, skill_id, detach) is None:
        raise NotFound(KIND, skill_id)
    await store.delete(VERSION_KIND, _version_key(skill_id, version))
    await anyio.to_thread.run_sync(_remove, version_dir(data_dir, skill_id, version))
    log.info("skill %s: version %s deleted", skill_id, version)


async def delete(store: Store, data_dir: Path, skill_id: str) -> None:
    """The skill with every version, records first (then nothing can name it), files last."""
    await get(store, skill_id)
    if not await store.delete(KIND, skill_id):
        raise NotFound(KIND, skill_id)
    removed = 0
    while True:  # every record naming the skill, a version attached meanwhile included
        page = await store.list_resources(
            VERSION_KIND, cursor=None, limit=100, include_archived=True, equals={"skill_id": skill_id}
        )
        if not page.items:
            break
        for document in page.items:
            removed += await store.delete(VERSION_KIND, document["id"])
    await anyio.to_thread.run_sync(_remove, _skill_dir(data_dir, skill_id))
    log.info("skill %s deleted with %d version(s)", skill_id, removed)


async def _forget(store: Store, key: str) -> None:
    """Drop the record of a version that was never attached, keeping the error that stopped it:
    a record left behind names no version (its skill does not list it)."""
    try:
        await store.delete(VERSION_KIND, key)
    except Exception:
        log.warning("skill version record %s left behind after a failed upload", key, exc_info=True)


def write_archive(data_dir: Path, document: Body, out: BinaryIO) -> None:
    """The version as a zip whose one top-level directory is the skill's name, the shape the
    SDK's ``download_session_skills`` unpacks. Blocking."""
    root = version_dir(data_dir, document["skill_id"], document["version"])
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for entry in document["_files"]:
            archive.write(root.joinpath(*entry["path"].split("/")), f"{document['name']}/{entry['path']}")


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
