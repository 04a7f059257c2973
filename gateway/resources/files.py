"""Session outputs as ``/v1/files`` entries (uploads share the collection: ``resources.uploads``).

Files the agent writes under ``/workspace/outputs`` in its sandbox become file
resources scoped to the session. Records are reconciled with the folder when it is
listed and whenever a turn ends, so an id stays the same while its file exists.

The model can rewrite its workspace at any moment (``rm -rf outputs && ln -s / outputs``,
racing us), so nothing here is opened by host path: every lookup starts from a
descriptor of the session's workspace and is resolved beneath it by the kernel with no
symlink allowed anywhere on the way (``sandbox_server.beneath``). ``outputs`` must be a
real directory, symlinked entries are neither listed nor followed, a download must be a
regular file, and a delete unlinks through a descriptor of the file's directory. A
symlink swapped in at any moment makes the file "not found", never a host file.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from gateway import ids
from gateway.errors import InvalidRequest, NotFound
from gateway.resources import common, uploads
from gateway.store.base import Body, Store
from sandbox_server import beneath, workspace_fs

KIND = "file"
OUTPUTS = "outputs"
MAX_FILES_PER_SESSION = 1000
_PATH = "_path"


@dataclass(frozen=True)
class OutputFile:
    relative: str
    size: int


render = common.public


class FileNotDownloadable(InvalidRequest):
    """The SDK raises ``FileNotDownloadableError`` for this ``error_code``."""

    def __init__(self, file_id: str) -> None:
        super().__init__(
            f"file {file_id!r} is not downloadable: only files a session wrote can be downloaded"
        )

    def extra(self) -> dict[str, object]:
        return {"details": {"error_code": "file_not_downloadable"}}


@contextlib.contextmanager
def _workspace(workspaces: Path, session_id: str) -> Iterator[int | None]:
    """An ``O_PATH`` descriptor of the session's workspace (None if it has none).

    The workspace directory itself is the gateway's (the sandbox is bound *inside* it),
    so it is opened by path; everything beneath is looked up from this descriptor.
    """
    fd: int | None
    # As root a workspace is a filesystem image that only a sandbox start mounts; a gateway
    # restarted since then must mount it again to see the outputs (``workspace_fs``).
    workspace_fs.attach_existing(workspaces / session_id)
    try:
        fd = os.open(workspaces / session_id, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _beneath_outputs(relative: str) -> str:
    return f"{OUTPUTS}/{relative}" if relative else OUTPUTS


def _scan(workspaces: Path, session_id: str) -> list[OutputFile] | None:
    """Regular files under the session's ``outputs``; symlinks are neither followed nor listed.
    None when the session has no workspace at all (it never used the sandbox)."""
    found: list[OutputFile] = []
    with _workspace(workspaces, session_id) as workspace:
        if workspace is None:
            return None
        try:
            root = beneath.open_beneath(
                workspace, OUTPUTS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, symlinks=False
            )
        except OSError:
            return found  # missing, or not a real directory
        try:
            for entry in beneath.walk(root):
                if stat.S_ISREG(entry.stat.st_mode):
                    found.append(OutputFile(entry.path, entry.stat.st_size))
                    if len(found) >= MAX_FILES_PER_SESSION:
                        break
        finally:
            os.close(root)
    return found


async def sync_session(store: Store, workspaces: Path, session_id: str) -> list[Body]:
    """Make the session's file records match its outputs folder; returns them oldest first."""
    on_disk = await anyio.to_thread.run_sync(_scan, workspaces, session_id)
    if on_disk is None:
        return []  # no workspace, so no outputs and no records: skip the query on every idle
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
    """Open the file behind a record beneath the session's workspace, following no symlink.

    Returns ``(fd, size)``; raises ``NotFound`` when the file is gone or was swapped for
    something that is not a regular file reached through real directories, and
    ``FileNotDownloadable`` for an upload (``downloadable: false``, as the API has it).
    """
    if uploads.is_upload(body):
        raise FileNotDownloadable(body["id"])
    with _workspace(workspaces, body["scope"]["id"]) as workspace:
        if workspace is None:
            raise NotFound("file", body["id"])
        try:
            fd = beneath.open_beneath(
                workspace,
                _beneath_outputs(body[_PATH]),
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK,
                symlinks=False,
            )
        except OSError:
            raise NotFound("file", body["id"]) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotFound("file", body["id"])
    return fd, info.st_size


async def delete(store: Store, workspaces: Path, uploads_dir: Path, file_id: str) -> Body:
    """Removes the bytes with the record: an upload's from ``uploads_dir``, an output's from
    its session's workspace."""
    body = await get(store, file_id)
    if uploads.is_upload(body):
        await uploads.delete(store, uploads_dir, body)
    else:
        await anyio.to_thread.run_sync(_unlink_output, workspaces, body)
        await store.delete(KIND, file_id)
    return {"id": file_id, "type": "file_deleted"}


def _unlink_output(workspaces: Path, body: Body) -> None:
    """Remove the file through a descriptor of its directory obtained beneath the workspace.

    No symlink is followed on the way, and ``unlinkat`` removes a final symlink itself,
    so whatever the model swapped in, nothing outside the workspace is removed. A file
    already gone (or unreachable) only loses its record.
    """
    with _workspace(workspaces, body["scope"]["id"]) as workspace:
        if workspace is None:
            return
        with contextlib.suppress(OSError):
            beneath.unlink_beneath(workspace, _beneath_outputs(body[_PATH]), symlinks=False)
