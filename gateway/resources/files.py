"""Session outputs as ``/v1/files`` entries.

Files the agent writes under ``/workspace/outputs`` in its sandbox become file
resources scoped to the session. Records are reconciled with the folder when it is
listed and whenever a turn ends, so an id stays the same while its file exists.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from gateway import ids
from gateway.errors import NotFound
from gateway.resources import common
from gateway.store.base import Body, Store

KIND = "file"
OUTPUTS = "outputs"
MAX_FILES_PER_SESSION = 1000
_PATH = "_path"


@dataclass(frozen=True)
class OutputFile:
    relative: str
    size: int


def outputs_dir(workspaces: Path, session_id: str) -> Path:
    return workspaces / session_id / OUTPUTS


render = common.public


def _scan(root: Path) -> list[OutputFile]:
    """Regular files under ``root``; symlinks are neither followed nor listed."""
    found: list[OutputFile] = []

    def walk(directory: Path, prefix: str) -> Iterator[OutputFile]:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                yield from walk(Path(entry.path), f"{prefix}{entry.name}/")
            elif stat.S_ISREG(info.st_mode):
                yield OutputFile(f"{prefix}{entry.name}", info.st_size)

    for item in walk(root, ""):
        found.append(item)
        if len(found) >= MAX_FILES_PER_SESSION:
            break
    return found


async def sync_session(store: Store, workspaces: Path, session_id: str) -> list[Body]:
    """Make the session's file records match its outputs folder; returns them oldest first."""
    on_disk = await anyio.to_thread.run_sync(_scan, outputs_dir(workspaces, session_id))
    page = await store.list_resources(
        KIND,
        cursor=None,
        limit=MAX_FILES_PER_SESSION,
        include_archived=True,
        equals={"scope.id": session_id},
        order="asc",
    )
    records = {body[_PATH]: body for body in page.items}
    current = {item.relative: item for item in on_disk}
    for relative, body in records.items():
        if relative not in current:
            await store.delete(KIND, body["id"])
    result: list[Body] = []
    for item in on_disk:
        existing = records.get(item.relative)
        if existing is None:
            created = _new_record(session_id, item)
            await store.insert(KIND, created)
            result.append(created)
        elif existing["size_bytes"] != item.size:
            result.append(
                await store.update(KIND, existing["id"], common.with_field("size_bytes", item.size))
                or existing
            )
        else:
            result.append(existing)
    return result


def _new_record(session_id: str, item: OutputFile) -> Body:
    mime, _ = mimetypes.guess_type(item.relative)
    return {
        "type": "file",
        "id": ids.new_id(ids.FILE),
        "filename": item.relative.rsplit("/", 1)[-1],
        "mime_type": mime or "application/octet-stream",
        "size_bytes": item.size,
        "created_at": ids.timestamp(),
        "downloadable": True,
        "scope": {"type": "session", "id": session_id},
        _PATH: item.relative,
    }


async def get(store: Store, file_id: str) -> Body:
    return await common.fetch(store, KIND, file_id)


def open_content(workspaces: Path, body: Body) -> tuple[int, int]:
    """Open the file behind a record without following symlinks out of the outputs folder.

    Returns ``(fd, size)``; raises ``NotFound`` when the file is gone or was swapped for
    something that is not a regular file inside the folder.
    """
    root = outputs_dir(workspaces, body["scope"]["id"]).resolve()
    target = root / body[_PATH]
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise NotFound("file", body["id"]) from None
    info = os.fstat(fd)
    real = Path(os.readlink(f"/proc/self/fd/{fd}"))
    if not stat.S_ISREG(info.st_mode) or not real.is_relative_to(root):
        os.close(fd)
        raise NotFound("file", body["id"])
    return fd, info.st_size


async def delete(store: Store, workspaces: Path, file_id: str) -> Body:
    body = await get(store, file_id)
    await anyio.to_thread.run_sync(_unlink_output, workspaces, body)
    await store.delete(KIND, file_id)
    return {"id": file_id, "type": "file_deleted"}


def _unlink_output(workspaces: Path, body: Body) -> None:
    """Remove the file through a verified directory fd, so a swapped-in symlink cannot redirect it."""
    root = outputs_dir(workspaces, body["scope"]["id"]).resolve()
    relative = Path(body[_PATH])
    try:
        dir_fd = os.open(root / relative.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        if Path(os.readlink(f"/proc/self/fd/{dir_fd}")).is_relative_to(root):
            os.unlink(relative.name, dir_fd=dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
