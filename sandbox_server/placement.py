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
from typing import IO, Literal

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sandbox_server import beneath
from sandbox_server.workspace import AREA_DIR, AREA_MOUNTED, Workspace, WorkspaceError

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
    """The placed resources of one workspace."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    # ------------------------------------------------------------------ the area itself

    def _area(self, root: int) -> int:
        """An ``O_PATH`` descriptor of the area, made if missing. An entry of that name the
        server did not make (the agent's) is moved aside first, so no resource lands in it."""
        for _ in range(3):
            with contextlib.suppress(FileExistsError):
                os.mkdir(AREA_DIR, 0o755, dir_fd=root)
            try:
                fd = os.open(AREA_DIR, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=root)
            except NotADirectoryError:  # a file or a symlink the agent put there
                fd = -1
            if fd >= 0 and os.fstat(fd).st_uid == os.geteuid():
                for name, mode in (("mnt", 0o755), ("tmp", 0o700)):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, mode, dir_fd=fd)
                return fd
            if fd >= 0:
                os.close(fd)
            aside = f"{AREA_DIR}.moved-{secrets.token_hex(4)}"
            os.rename(AREA_DIR, aside, src_dir_fd=root, dst_dir_fd=root)
        raise PlacementError("the session area could not be made")

    def placed(self) -> list[str]:
        root = self.ws.open_root()
        try:
            fd = beneath.open_beneath(root, f"{AREA_DIR}/{_MANIFEST}", os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return []
        finally:
            os.close(root)
        with os.fdopen(fd, "rb") as f:
            keys = json.loads(f.read() or b"[]")
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
        """Unpack ``archive`` at ``mount_path`` (a model path); returns where it went."""
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
                    os.close(beneath.makedirs_beneath(top, name, 0o755, owner=owner))
                    continue
                parent = beneath.makedirs_beneath(top, parent_name, 0o755, owner=owner)
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
        try:
            parent = beneath.makedirs_beneath(root, parent_name, 0o755, owner=owner)
        except (FileExistsError, NotADirectoryError):
            raise PlacementError(f"{shown}: a parent of this path is a file, not a directory") from None
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
        self._busy: dict[str, anyio.Lock] = {}

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
        mount_path = request.headers.get(MOUNT_PATH_HEADER, "")
        kind = request.headers.get(KIND_HEADER, "")
        if kind not in ("file", "tree") or not mount_path:
            return JSONResponse(
                {"error": f"{KIND_HEADER} (file|tree) and {MOUNT_PATH_HEADER} are required"}, 400
            )
        lock = self._busy.setdefault(key, anyio.Lock())
        async with lock:
            if key in await anyio.to_thread.run_sync(self.placement.placed):
                return JSONResponse({"placed": key, "already": True})
            try:
                where = await self._receive_and_place(request, key, mount_path, kind)  # type: ignore[arg-type]
            except PlacementError as exc:
                return JSONResponse({"error": str(exc)}, 409)
        return JSONResponse({"placed": key, "path": where})

    async def _receive_and_place(self, request: Request, key: str, mount_path: str, kind: Kind) -> str:
        """Spool the body into the area's ``tmp`` (on the workspace's own disk), then unpack it."""
        ws = self.placement.ws
        root = ws.open_root()
        try:
            os.close(self.placement._area(root))
            tmp = beneath.open_beneath(root, _TMP, _DIR_FLAGS, symlinks=False)
        finally:
            os.close(root)
        name = f"{secrets.token_hex(8)}.tar"
        try:
            fd = os.open(
                name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=tmp
            )
            os.unlink(name, dir_fd=tmp)  # the open descriptor is all that is needed
        finally:
            os.close(tmp)
        with os.fdopen(fd, "w+b") as spool:
            try:
                async for chunk in request.stream():
                    await anyio.to_thread.run_sync(spool.write, chunk)
            except OSError as exc:
                raise PlacementError(f"{mount_path} could not be received: {exc.strerror or exc}") from None
            spool.seek(0)
            return await anyio.to_thread.run_sync(self.placement.place, key, mount_path, kind, spool)
