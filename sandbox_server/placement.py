"""Placing a session's resources in its workspace: files and trees the gateway sends, never the model.

The gateway (``gateway.tools.placement``) sends each resource once per workspace as a tar
stream to ``PUT /tether/resources/{key}`` beside ``/mcp`` (same bearer token; through the
tunnel for an on-prem sandbox, so the bytes travel and the credential that fetched them does
not), and asks ``GET /tether/resources`` which keys a workspace already holds. Neither is an
MCP tool, so the model can call neither.

Where things go: a path under ``/workspace`` becomes the agent's own (handed to the sandbox
identity, changeable); a path under ``/mnt/session`` lands in the session area
(``workspace.AREA_DIR``), which only this server writes: bound read-only at ``/mnt/session``
in every command, masked at its workspace spelling, read-only to the file tools.

The model may race anything in its workspace, so a resource is first unpacked into the area's
private ``tmp`` (which the sandbox cannot reach) with every name checked, then renamed into
place through descriptors opened beneath the root; something already at the destination is
never replaced. The record of placed keys (``placed.json``) is in the area too, so a restarted
sandbox on the same workspace is not sent them again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import tarfile
import threading
from typing import IO, Literal
from urllib.parse import unquote

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox_server import beneath
from sandbox_server.workspace import AREA_DIR, AREA_MOUNTED, Workspace, WorkspaceError
from sandbox_server.workspace_fs import AREA_SUFFIX

PATH = "/tether/resources"
MOUNT_PATH_HEADER = "x-tether-mount-path"
KIND_HEADER = "x-tether-kind"
Kind = Literal["file", "tree"]
_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,160}$")
_MANIFEST = "placed.json"
_TMP = f"{AREA_DIR}/tmp"
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_COPY_CHUNK = 1 << 20
_MAX_MANIFEST = 1 << 20


class PlacementError(Exception):
    """Why a resource could not be placed; the message names it for the session's log."""


def _in_area(relative: str) -> bool:
    return relative == AREA_DIR or relative.startswith(AREA_DIR + "/")


def _member_name(raw: str) -> str:
    """A tar member's name relative to the destination, or ``PlacementError``."""
    name = raw.removeprefix("./").rstrip("/")
    parts = name.split("/") if name not in ("", ".") else []
    if raw.startswith("/") or "\x00" in raw or any(p in ("", ".", "..") for p in parts):
        raise PlacementError(f"the archive names {raw!r}, which is not a plain relative path")
    return "/".join(parts)


class Placement:
    """The placed resources of one workspace.

    The area is trusted only if it is the directory this server (or an earlier one on the same
    workspace) made: its inode number (stable across remounts of the workspace's filesystem) is
    kept beside the workspace (``<workspace>.area``),
    where the sandbox cannot reach, so an entry of that name the agent made (even as the
    server's own uid, when the server is unprivileged) is moved aside instead of used.
    ``ensure_area`` runs when the server starts, before any command, so from then on the area
    is masked in every command and the agent cannot replace it.
    """

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._identity = ws.root.parent / f"{ws.root.name}{AREA_SUFFIX}"
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ the area itself

    def ensure_area(self) -> None:
        root = self.ws.open_root()
        try:
            os.close(self._area(root))
        finally:
            os.close(root)

    def area(self) -> int:
        """An ``O_PATH`` descriptor of the trusted area (made if missing), for its other users."""
        root = self.ws.open_root()
        try:
            return self._area(root)
        finally:
            os.close(root)

    def _recorded(self) -> str | None:
        try:
            return self._identity.read_text().strip()
        except OSError:
            return None

    def _trusted(self, root: int) -> int | None:
        """A descriptor of the area if it is the one this server made, else None."""
        try:
            fd = os.open(AREA_DIR, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=root)
        except (FileNotFoundError, NotADirectoryError):
            return None
        info = os.fstat(fd)
        if str(info.st_ino) == self._recorded() and info.st_uid == os.geteuid():
            return fd
        os.close(fd)
        return None

    def _area(self, root: int) -> int:
        """An ``O_PATH`` descriptor of the trusted area, made (and recorded) if missing."""
        fd = self._trusted(root)
        if fd is None:
            with contextlib.suppress(FileNotFoundError):  # the agent's, or a stale one: kept, aside
                os.rename(
                    AREA_DIR, f"{AREA_DIR}.moved-{secrets.token_hex(4)}", src_dir_fd=root, dst_dir_fd=root
                )
            os.mkdir(AREA_DIR, 0o755, dir_fd=root)
            fd = os.open(AREA_DIR, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=root)
            info = os.fstat(fd)
            temp = self._identity.with_name(f".{self._identity.name}.{secrets.token_hex(4)}")
            temp.write_text(f"{info.st_ino}\n")
            temp.replace(self._identity)
        for name, mode in (("mnt", 0o755), ("tmp", 0o700)):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, mode, dir_fd=fd)
        return fd

    def spool(self) -> int:
        """A nameless file in the area's private ``tmp`` to receive an archive into (it counts
        against the workspace's disk, and nothing of it remains if the server dies)."""
        root = self.ws.open_root()
        try:
            os.close(self._area(root))
            tmp = beneath.open_beneath(root, _TMP, _DIR_FLAGS, symlinks=False)
        finally:
            os.close(root)
        try:
            try:
                return os.open(".", os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600, dir_fd=tmp)
            except OSError as exc:  # a filesystem without O_TMPFILE: a name, gone at once
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR):
                    raise
            name = f"{secrets.token_hex(8)}.tar"
            fd = os.open(
                name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tmp
            )
            os.unlink(name, dir_fd=tmp)
            return fd
        finally:
            os.close(tmp)

    def placed(self) -> list[str]:
        """The keys the trusted area's record lists; nothing when there is no such area or record."""
        root = self.ws.open_root()
        try:
            area = self._trusted(root)
        finally:
            os.close(root)
        if area is None:
            return []
        try:
            fd = os.open(_MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=area)
        except OSError:
            return []
        finally:
            os.close(area)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return []
            try:
                keys = json.loads(f.read(_MAX_MANIFEST) or b"[]")
            except ValueError:
                return []
        return [str(k) for k in keys] if isinstance(keys, list) else []

    def _record(self, area: int, key: str) -> None:
        keys = [*dict.fromkeys([*self.placed(), key])]
        temp = f".{_MANIFEST}.{secrets.token_hex(4)}"
        fd = os.open(temp, _NEW_FILE, 0o644, dir_fd=area)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(keys).encode())
            f.flush()
            os.fsync(f.fileno())
        os.rename(temp, _MANIFEST, src_dir_fd=area, dst_dir_fd=area)

    # ------------------------------------------------------------------ placing one resource

    def place(self, key: str, mount_path: str, kind: Kind, archive: IO[bytes]) -> str:
        """Unpack ``archive`` at ``mount_path`` (a model path); returns where it went. One at a
        time per workspace, so the record of placed keys never loses one."""
        with self._lock:
            return self._place(key, mount_path, kind, archive)

    def _place(self, key: str, mount_path: str, kind: Kind, archive: IO[bytes]) -> str:
        try:
            relative = self.ws.relative(mount_path)
        except WorkspaceError as exc:
            raise PlacementError(str(exc)) from None
        if (
            not relative
            or relative == AREA_MOUNTED
            or (_in_area(relative) and not relative.startswith(AREA_MOUNTED))
        ):
            raise PlacementError(f"{mount_path} cannot hold a resource")
        owner = None if _in_area(relative) else self.ws.owner
        root = self.ws.open_root()
        area = self._area(root)
        tmp = beneath.open_beneath(root, _TMP, _DIR_FLAGS, symlinks=False)
        staged = secrets.token_hex(8)
        try:
            with tarfile.open(fileobj=archive, mode="r|") as tar:
                if kind == "file":
                    self._unpack_file(tar, tmp, staged, owner)
                else:
                    os.mkdir(staged, 0o755, dir_fd=tmp)
                    if owner is not None:
                        beneath.chown_created(tmp, staged, owner)
                    self._unpack_tree(tar, tmp, staged, owner)
            self._move_into_place(root, tmp, staged, relative, mount_path, owner)
            self._record(area, key)
        except tarfile.TarError as exc:
            raise PlacementError(f"the archive for {mount_path} is not valid: {exc}") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise PlacementError(f"{mount_path} does not fit in the workspace's disk quota") from None
            raise PlacementError(f"{mount_path} could not be placed: {exc.strerror or exc}") from None
        finally:
            _remove_tree(tmp, staged)
            for fd in (tmp, area, root):
                os.close(fd)
        return self.ws.mount_path(relative)

    def _unpack_file(
        self, tar: tarfile.TarFile, tmp: int, staged: str, owner: tuple[int, int] | None
    ) -> None:
        member = tar.next()
        if member is None or not member.isreg():
            raise PlacementError("a file resource's archive must hold one regular file")
        self._write(tar, member, tmp, staged, owner)
        if tar.next() is not None:
            raise PlacementError("a file resource's archive must hold only one regular file")

    def _unpack_tree(
        self, tar: tarfile.TarFile, tmp: int, staged: str, owner: tuple[int, int] | None
    ) -> None:
        top = os.open(staged, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=tmp)
        try:
            for member in tar:
                name = _member_name(member.name)
                if not name:
                    continue
                parent_name, _, leaf = name.rpartition("/")
                if member.isdir():
                    os.close(beneath.makedirs_beneath(top, name, 0o755, owner=owner, symlinks=False))
                    continue
                parent = beneath.makedirs_beneath(top, parent_name, 0o755, owner=owner, symlinks=False)
                try:
                    if member.isreg():
                        self._write(tar, member, parent, leaf, owner)
                    elif member.issym():
                        os.symlink(member.linkname, leaf, dir_fd=parent)
                        if owner is not None:
                            os.chown(leaf, *owner, dir_fd=parent, follow_symlinks=False)
                finally:
                    os.close(parent)
        finally:
            os.close(top)

    @staticmethod
    def _write(
        tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, leaf: str, owner: tuple[int, int] | None
    ) -> None:
        mode = 0o755 if member.mode & 0o111 else 0o644
        fd = os.open(leaf, _NEW_FILE, mode, dir_fd=parent)
        with os.fdopen(fd, "wb") as out:
            source = tar.extractfile(member)
            assert source is not None
            while chunk := source.read(_COPY_CHUNK):
                out.write(chunk)
            os.fchmod(out.fileno(), mode)
            if owner is not None:
                beneath.chown_if_ours(out.fileno(), owner)

    @staticmethod
    def _move_into_place(
        root: int, tmp: int, staged: str, relative: str, shown: str, owner: tuple[int, int] | None
    ) -> None:
        parent_name, _, leaf = relative.rpartition("/")
        try:  # never through a symlink: a resource lands where its path says, or nowhere
            parent = beneath.makedirs_beneath(root, parent_name, 0o755, owner=owner, symlinks=False)
        except (FileExistsError, NotADirectoryError):
            raise PlacementError(f"{shown}: a parent of this path is a file, not a directory") from None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EXDEV):
                raise
            raise PlacementError(f"{shown}: a parent of this path is a symbolic link") from None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                raise PlacementError(f"{shown} already exists in the sandbox; it was left as it is")
            os.rename(staged, leaf, src_dir_fd=tmp, dst_dir_fd=parent)
        finally:
            os.close(parent)


def _remove_tree(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd`` if it is still there (a failed placement's leftovers)."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for entry in os.listdir(fd):
            _remove_tree(fd, entry)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


# ---------------------------------------------------------------------- the HTTP side


class PlacementRoutes:
    """ASGI: ``PATH`` requests are placement's, everything else (``/mcp``, lifespan) goes to ``app``."""

    def __init__(self, app: ASGIApp, placement: Placement) -> None:
        self.app = app
        self.placement = placement
        self._busy = anyio.Lock()
        """One placement at a time: a workspace has one record of what it holds."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != PATH and not path.startswith(PATH + "/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await self._handle(request, path[len(PATH) + 1 :])
        await response(scope, receive, send)

    async def _handle(self, request: Request, key: str) -> JSONResponse:
        if not key and request.method == "GET":
            return JSONResponse({"placed": await anyio.to_thread.run_sync(self.placement.placed)})
        if request.method != "PUT" or not _KEY.match(key):
            return JSONResponse({"error": "PUT /tether/resources/{key} or GET /tether/resources"}, 405)
        mount_path = unquote(request.headers.get(MOUNT_PATH_HEADER, ""), errors="strict")
        kind = request.headers.get(KIND_HEADER, "")
        if kind not in ("file", "tree") or not mount_path:
            return JSONResponse(
                {"error": f"{KIND_HEADER} (file|tree) and {MOUNT_PATH_HEADER} are required"}, 400
            )
        async with self._busy:
            if key in await anyio.to_thread.run_sync(self.placement.placed):
                return JSONResponse({"placed": key, "already": True})
            try:
                where = await self._receive_and_place(request, key, mount_path, kind)  # type: ignore[arg-type]
            except PlacementError as exc:
                return JSONResponse({"error": str(exc)}, 409)
        return JSONResponse({"placed": key, "path": where})

    async def _receive_and_place(self, request: Request, key: str, mount_path: str, kind: Kind) -> str:
        """Spool the body into the area's ``tmp`` (on the workspace's own disk), then unpack it."""
        fd = await anyio.to_thread.run_sync(self.placement.spool)
        with os.fdopen(fd, "w+b") as spool:
            try:
                async for chunk in request.stream():
                    await anyio.to_thread.run_sync(spool.write, chunk)
            except OSError as exc:
                raise PlacementError(f"{mount_path} could not be received: {exc.strerror or exc}") from None
            spool.seek(0)
            return await anyio.to_thread.run_sync(self.placement.place, key, mount_path, kind, spool)
