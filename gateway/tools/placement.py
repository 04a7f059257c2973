"""Getting a session's resources into its sandbox before its tools run (``sandbox_server.placement``).

Before a sandbox tool call the harness asks ``Placer.ensure``: what the session wants placed
(its ``resources``) is compared with what this sandbox's workspace already holds, and each
missing one is sent as a tar stream: an uploaded file straight from ``DATA_DIR/files`` (a
header, the bytes, the padding: no copy), a repository cloned here first with its token (the
token and the clone's credentials never leave the gateway; the sandbox gets the checked-out
tree, ``.git`` included). The same request goes through the tunnel for an on-prem sandbox.

A resource that cannot be placed is reported once per sandbox as a ``session.error`` (the SDK's
``repository_*_error`` for repositories, ``retry_status: retrying``: the session runs on
without it, and a new sandbox tries again). What a sandbox holds is remembered per process,
so a call that needs nothing new costs one read of the session.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx2

from gateway.resources import session_resources, skills, uploads
from gateway.resources.skill_index import SkillIndex, skill_path
from gateway.resources.skills import SkillVersionRef
from gateway.schemas.session_resources import SESSION_AREA
from gateway.sessionlog import events as ev
from gateway.sessionlog import readable
from gateway.store.base import Body, EventQuery, Store
from gateway.tools import git_fetch
from gateway.tools.mcp_client import TransportFor
from gateway.tools.sandbox import SandboxEndpoint
from gateway.tunnels.tokens import Sealer

log = logging.getLogger("tether.placement")

PLACEMENT_PATH = "/tether/resources"
MOUNT_PATH_HEADER = "x-tether-mount-path"
KIND_HEADER = "x-tether-kind"
SEND_TIMEOUT = 600.0
REMEMBERED_SANDBOXES = 4096
RETRY_AFTER = 60.0
"""Seconds before a resource that failed is tried again in the same sandbox."""
LISTING = "listing"
TRANSCRIPT_SOURCES = "_transcript_sources"
"""Internal field of a session (a dream's): sessions whose logs it gets as text files."""
TRANSCRIPTS_AREA = f"{SESSION_AREA}/transcripts"
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE


class PlacementFailed(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class Wanted:
    key: str
    mount_path: str
    kind: Literal["file", "tree"]
    resource: Body


def wanted(session: Body, skills: list[SkillVersionRef]) -> list[Wanted]:
    """What the session's sandbox should hold, keyed so a placed resource is never sent twice:
    its resources, and its agent's skills (read-only under ``/mnt/session/skills``)."""
    placed = [
        Wanted(r["id"], r["mount_path"], "file" if r["type"] == "file" else "tree", r)
        for r in session.get("resources") or []
        if r["type"] != "memory_store"  # mounted and kept in step by ``memory_sync`` instead
    ]
    for ref in skills:
        resource = {"type": "skill", "id": f"{ref.skill_id} version {ref.version}", "skill": ref}
        placed.append(Wanted(f"skill.{ref.skill_id}.{ref.version}", skill_path(ref), "tree", resource))
    for source in session.get(TRANSCRIPT_SOURCES) or []:
        resource = {"type": "transcript", "id": f"the transcript of session {source}", "session_id": source}
        placed.append(Wanted(f"transcript.{source}", f"{TRANSCRIPTS_AREA}/{source}.md", "file", resource))
    return placed


def placement_url(mcp_url: str) -> str:
    """The sandbox's placement endpoint, beside its ``/mcp``."""
    parts = urlsplit(mcp_url)
    return urlunsplit((parts.scheme, parts.netloc, PLACEMENT_PATH, "", ""))


@dataclass
class _SlotState:
    """One sandbox's placements, as this process knows them."""

    held: set[str] = field(default_factory=set)
    retry_at: dict[str, float] = field(default_factory=dict)
    """Keys that failed: not tried again before then (a failing clone is not repeated per call)."""
    reported: set[str] = field(default_factory=set)

    def wants(self, key: str, now: float) -> bool:
        return key not in self.held and self.retry_at.get(key, 0.0) <= now

    def due(self, wants: list[Wanted], now: float) -> bool:
        return self.retry_at.get(LISTING, 0.0) <= now and any(self.wants(w.key, now) for w in wants)

    def placed(self, key: str) -> None:
        self.held.add(key)
        self.retry_at.pop(key, None)

    def fail(self, key: str, retry_at: float) -> None:
        self.retry_at[key] = retry_at

    def report(self, key: str) -> bool:
        """True the first time a failure of ``key`` is seen here: each is logged once per sandbox."""
        first = key not in self.reported
        self.reported.add(key)
        return first


class Placer:
    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        data_dir: Path,
        git_base_url: str = git_fetch.GITHUB_BASE_URL,
        transport_for: TransportFor | None = None,
        skill_index: SkillIndex | None = None,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.skill_index = skill_index or SkillIndex()
        self.sealer = sealer
        self.files_dir = uploads.files_dir(data_dir)
        self.scratch = data_dir / "tmp"
        self.git_base_url = git_base_url
        self.transport_for = transport_for
        self._slots: OrderedDict[tuple[str, str], _SlotState] = OrderedDict()
        """(session, sandbox URL) -> what was placed there, and what failed and when to retry."""
        self._locks: dict[str, anyio.Lock] = {}

    async def ensure(self, session_id: str, endpoint: SandboxEndpoint) -> list[Body]:
        """Place what the sandbox lacks; the ``session.error`` events for what could not be."""
        session = await self.store.get(session_resources.SESSION_KIND, session_id) or {}
        wants = wanted(session, await self.skill_index.refs(self.store, session.get("agent") or {}))
        if not wants:
            return []
        slot = (session_id, endpoint.url)
        known = self._slots.get(slot)
        if known is not None and not known.due(wants, anyio.current_time()):
            return []
        lock = self._locks.setdefault(session_id, anyio.Lock())
        async with lock:
            errors = await self._place(session, wants, self._remember(slot), endpoint)
        if not lock.statistics().tasks_waiting:
            self._locks.pop(session_id, None)
        return errors

    async def _place(
        self, session: Body, wants: list[Wanted], state: _SlotState, endpoint: SandboxEndpoint
    ) -> list[Body]:
        errors: list[Body] = []
        url = placement_url(endpoint.url)
        async with httpx2.AsyncClient(
            headers=dict(endpoint.headers),
            timeout=httpx2.Timeout(SEND_TIMEOUT, connect=10.0),
            transport=self.transport_for(url) if self.transport_for else None,
        ) as client:
            try:
                answer = await client.get(url)
                answer.raise_for_status()
                state.held.update(answer.json().get("placed") or [])
            except (httpx2.HTTPError, ValueError, AttributeError) as exc:
                missing = [w for w in wants if w.key not in state.held]
                if missing and state.report(LISTING):
                    names = ", ".join(w.mount_path for w in missing)
                    message = (
                        f"the sandbox could not say which resources it holds ({exc}); not placed: {names}"
                    )
                    errors.append(ev.session_error("unknown_error", message, "retrying"))
                state.fail(LISTING, anyio.current_time() + RETRY_AFTER)
                return errors
            for want in wants:
                if not state.wants(want.key, anyio.current_time()):
                    continue
                try:
                    await self._send(client, url, want, session)
                except PlacementFailed as exc:
                    if state.report(want.key):
                        errors.append(_error_event(want, exc))
                    state.fail(want.key, anyio.current_time() + RETRY_AFTER)
                else:
                    state.placed(want.key)
        return errors

    def _remember(self, slot: tuple[str, str]) -> _SlotState:
        state = self._slots.pop(slot, None) or _SlotState()
        self._slots[slot] = state
        while len(self._slots) > REMEMBERED_SANDBOXES:
            self._slots.popitem(last=False)
        return state

    async def _send(self, client: httpx2.AsyncClient, url: str, want: Wanted, session: Body) -> None:
        if want.kind == "file" and want.resource["type"] == "file":
            await self._put(client, url, want, await self._file_archive(want.resource["file_id"]))
            return
        with tempfile.TemporaryDirectory(prefix="place-", dir=self._scratch()) as scratch:
            if want.resource["type"] == "transcript":
                text = Path(scratch) / "transcript.md"
                await self._transcript(want.resource["session_id"], text)
                await self._put(
                    client, url, want, _one_file_archive(text, (await anyio.Path(text).stat()).st_size)
                )
                return
            archive = Path(scratch) / "tree.tar"
            if want.resource["type"] == "skill":
                ref: SkillVersionRef = want.resource["skill"]
                files = skills.version_dir(self.data_dir, ref.skill_id, ref.version)
                try:
                    await anyio.to_thread.run_sync(_pack, files, archive)
                except OSError as exc:
                    raise PlacementFailed("unknown_error", f"its files are missing: {exc.strerror}") from None
            else:
                tree = Path(scratch) / "tree"
                await self._clone(want.resource, session, tree, archive)
            await self._put(client, url, want, _stream(archive))

    async def _put(
        self, client: httpx2.AsyncClient, url: str, want: Wanted, body: AsyncIterator[bytes]
    ) -> None:
        headers = {MOUNT_PATH_HEADER: quote(want.mount_path, safe="/"), KIND_HEADER: want.kind}
        try:
            answer = await client.put(f"{url}/{want.key}", content=body, headers=headers)
        except (httpx2.HTTPError, OSError) as exc:
            raise PlacementFailed(
                _failure_type(want), f"{want.mount_path} could not be sent: {exc}"
            ) from None
        if answer.status_code != 200:
            try:
                reason = str(answer.json().get("error"))
            except ValueError:
                reason = f"the sandbox answered {answer.status_code}"
            raise PlacementFailed(_failure_type(want), reason)

    async def _file_archive(self, file_id: str) -> AsyncIterator[bytes]:
        """A one-member tar of the uploaded file, made as it is sent (checked before sending)."""
        body = await self.store.get(uploads.KIND, file_id)
        if body is None or not uploads.is_upload(body):
            raise PlacementFailed("unknown_error", f"file {file_id!r} no longer exists")
        path = self.files_dir / file_id
        try:
            size = (await anyio.Path(path).stat()).st_size
        except OSError:
            raise PlacementFailed("unknown_error", f"file {file_id!r}: its content is missing") from None
        return _one_file_archive(path, size)

    async def _transcript(self, session_id: str, destination: Path) -> None:
        """The session's log as text (``sessionlog.readable``), written to ``destination``."""
        session = await self.store.get(session_resources.SESSION_KIND, session_id)
        if session is None:
            raise PlacementFailed("unknown_error", f"session {session_id} no longer exists")
        events = [e.body for e in await self.store.read_events(session_id, EventQuery())]
        await anyio.Path(destination).write_text(readable.render(session, events), encoding="utf-8")

    async def _clone(self, resource: Body, session: Body, tree: Path, archive: Path) -> None:
        """Clone the repository into ``tree`` and pack it into ``archive`` (worker threads)."""
        token = session_resources.token(self.sealer, session, resource["id"])
        try:
            repository = git_fetch.parse_repository_url(resource["url"])
            await anyio.to_thread.run_sync(
                lambda: git_fetch.clone(
                    repository,
                    tree,
                    base_url=self.git_base_url,
                    token=token,
                    checkout=resource.get("checkout"),
                )
            )
        except git_fetch.CheckoutFailed as exc:
            raise PlacementFailed(exc.error_type, exc.message) from None
        except ValueError as exc:
            raise PlacementFailed("repository_clone_error", str(exc)) from None
        await anyio.to_thread.run_sync(_pack, tree, archive)
        await anyio.to_thread.run_sync(shutil.rmtree, tree)

    def _scratch(self) -> Path:
        self.scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self.scratch


def _one_file_archive(path: Path, size: int) -> AsyncIterator[bytes]:
    """A one-member tar of the file at ``path`` (``size`` bytes), made as it is sent: a header,
    the bytes, the padding."""

    async def archive() -> AsyncIterator[bytes]:
        async with await anyio.open_file(path, "rb") as source:
            info = tarfile.TarInfo("file")
            info.size, info.mode = size, 0o644
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            while chunk := await source.read(_CHUNK):
                yield chunk
        yield b"\0" * ((_BLOCK - size % _BLOCK) % _BLOCK + 2 * _BLOCK)

    return archive()


def _pack(tree: Path, archive: Path) -> None:
    if not tree.is_dir():
        raise FileNotFoundError(2, "No such directory")
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(tree, arcname=".", recursive=True)


async def _stream(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as source:
        while chunk := await source.read(_CHUNK):
            yield chunk


def _failure_type(want: Wanted) -> str:
    return "repository_clone_error" if want.kind == "tree" else "unknown_error"


def _error_event(want: Wanted, exc: PlacementFailed) -> Body:
    resource = want.resource
    if resource["type"] in ("skill", "transcript"):
        return ev.session_error(
            exc.error_type, f"{resource['type']} {resource['id']} ({want.mount_path}): {exc}", "retrying"
        )
    extra = {"repository_url": resource["url"]} if resource["type"] == "github_repository" else {}
    message = f"resource {resource['id']} ({want.mount_path}): {exc}"
    return ev.session_error(exc.error_type, message, "retrying", **extra)
