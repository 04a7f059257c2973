"""Keeping a session's mounted memory stores and their stores in step (``sandbox_server.memory_mounts``).

Around each sandbox tool call the harness asks ``MemorySync.sync``. For every store attached to
the session, the sandbox says what its mount holds compared with the base (what the two last
agreed on). What the session changed in a ``read_write`` mount is written back as memory
versions with the session as their author, each with the precondition that the store still
holds what the session started from (``content_sha256`` of the base, or no memory there): so of
two sessions changing one memory, the first to finish its tool call wins and the other is told.
Then the mount is made to equal the store (the store is the truth): what another session wrote
appears, and a change that could not be saved (a conflict, a file that cannot be a memory) is
replaced by the store's version or removed, with a note appended to the tool's result so the
model knows. Removals are saved before writes, so a directory of memories may become a file; a
memory whose text the sandbox did not send (its answer is bounded) is left as it is, base and
all, for the next sync. The versions are written before the tool result is logged, so a crash
after a tool call loses nothing; one during the call leaves the change in the mount, and the next sync
(by whichever gateway resumes the session) saves it, since the sandbox keeps the base.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import httpx2

from gateway.errors import NotFound
from gateway.resources import memories, session_resources
from gateway.schemas.memory_stores import session_actor
from gateway.store.base import Body, Store
from gateway.tools.mcp_client import TransportFor
from gateway.tools.sandbox import SandboxEndpoint

log = logging.getLogger("tether.memory")

MEMORY_PATH = "/tether/memory"
TIMEOUT = 60.0


def memory_url(mcp_url: str) -> str:
    """The sandbox's memory endpoint, beside its ``/mcp``."""
    parts = urlsplit(mcp_url)
    return urlunsplit((parts.scheme, parts.netloc, MEMORY_PATH, "", ""))


class MemorySync:
    def __init__(self, store: Store, transport_for: TransportFor | None = None) -> None:
        self.store = store
        self.transport_for = transport_for
        self._locks: dict[str, anyio.Lock] = {}
        self._reported: set[tuple[str, str, str]] = set()
        """(session, sandbox URL, store): a mount that could not be reached, told once."""

    async def sync(self, session_id: str, endpoint: SandboxEndpoint) -> list[str]:
        """Sync every store attached to the session; notes for the model (empty when all went in)."""
        session = await self.store.get(session_resources.SESSION_KIND, session_id) or {}
        attached = session_resources.memory_attachments(session)
        if not attached:
            return []
        lock = self._locks.setdefault(session_id, anyio.Lock())
        notes: list[str] = []
        async with (
            lock,
            httpx2.AsyncClient(
                headers=dict(endpoint.headers),
                timeout=httpx2.Timeout(TIMEOUT, connect=10.0),
                transport=self.transport_for(endpoint.url) if self.transport_for else None,
            ) as client,
        ):
            for attachment in attached:
                notes += await self._sync_one(client, session_id, endpoint.url, attachment)
        if not lock.statistics().tasks_waiting:
            self._locks.pop(session_id, None)
        return notes

    async def _sync_one(
        self, client: httpx2.AsyncClient, session_id: str, mcp_url: str, attachment: Body
    ) -> list[str]:
        store_id, mount = attachment["memory_store_id"], attachment["mount_path"]
        url = f"{memory_url(mcp_url)}/{mount.rpartition('/')[2]}"
        try:
            answer = await client.get(url)
            answer.raise_for_status()
            mounted: Body = answer.json()
        except (httpx2.HTTPError, ValueError) as exc:
            return self._unreachable(session_id, mcp_url, mount, exc)
        files: dict[str, str] = mounted.get("files") or {} if mounted.get("mounted") else {}
        base: dict[str, str] = mounted.get("base") or {} if mounted.get("mounted") else {}
        unsaved: dict[str, str] = {}
        texts, writable = mounted.get("changed") or {}, attachment["access"] == "read_write"
        later = {
            p for p, t in files.items() if writable and t != base.get(p) and t[:1] != "!" and p not in texts
        }
        edits: list[memories.Edit] = []
        for path in sorted(set(files) | set(base), key=lambda p: (p in files, p)):  # removals first
            now, was = files.get(path), base.get(path)
            if now == was or path in later:
                continue
            if not writable:
                unsaved[path] = "the store is mounted read-only"
            elif now is not None and now.startswith("!"):
                unsaved[path] = now[1:]
            elif now is not None and not isinstance(texts.get(path), str):
                unsaved[path] = "the sandbox did not send its text"
            else:
                edits.append((f"/{path}", texts[path] if now is not None else None, was or memories.ABSENT))
        try:  # each reads the store's index, so each finds a store deleted meanwhile
            refused = await memories.apply_many(self.store, store_id, edits, session_actor(session_id))
            snapshot = await memories.snapshot(self.store, store_id)
        except NotFound:
            return self._unreachable(session_id, mcp_url, mount, "the memory store was deleted")
        unsaved |= {path[1:]: why for path, exc in refused.items() if (why := _why(exc)) is not None}
        desired = {path[1:]: (text, sha) for path, text, sha in snapshot}
        changes = {
            p: desired[p][0] if p in desired else None for p in _differing(files, desired) if p not in later
        }
        wanted = {path: sha for path, (_, sha) in desired.items() if path not in later}
        wanted |= {path: base[path] for path in later if path in base}
        if changes or wanted != base or not mounted.get("mounted"):
            expect = {path: files.get(path) for path in changes}
            body = {"access": attachment["access"], "apply": changes, "expect": expect, "base": wanted}
            try:
                answer = await client.put(url, json=body)
                answer.raise_for_status()
            except httpx2.HTTPError as exc:
                return self._unreachable(session_id, mcp_url, mount, exc)
            for path, why in (answer.json().get("skipped") or {}).items():
                log.info(
                    "memory %s/%s of session %s left for the next sync: %s", mount, path, session_id, why
                )
        return [_note(mount, path, why, path in desired) for path, why in unsaved.items()]

    def _unreachable(self, session_id: str, mcp_url: str, mount: str, why: Any) -> list[str]:
        key = (session_id, mcp_url, mount)
        if key in self._reported:
            return []
        self._reported.add(key)
        log.warning("memory %s of session %s could not be synced: %s", mount, session_id, why)
        return [f"[memory] {mount} could not be synced with its store ({why}); changes there are not saved."]


def _why(exc: Exception) -> str | None:
    """What the model is told of an edit the store refused (None: nothing to tell)."""
    if isinstance(exc, memories.PreconditionFailed | memories.PathConflict):
        return "another session changed this memory first"
    if isinstance(exc, NotFound):
        return None  # removed: someone removed it first, which is what was wanted
    return str(exc)


def _differing(files: dict[str, str], desired: dict[str, tuple[str, str]]) -> Iterable[str]:
    for path in sorted(set(files) | set(desired)):
        if files.get(path) != (desired[path][1] if path in desired else None):
            yield path


def _note(mount: str, path: str, why: str, kept: bool) -> str:
    now = "the file now holds the store's version" if kept else "the file was removed from the mount"
    return f"[memory] {mount}/{path} was not saved: {why}; {now}."
