"""A filesystem of its own for each workspace: the disk quota enforced by the kernel.

A quota measured by walking the workspace can be outrun (a fast writer between two walks)
and fooled (trees too deep or too closed to walk). When the sandbox server runs as root,
each workspace is instead an ext4 image of exactly the quota's size, ``<workspace>.img``
beside the directory (sparse: it costs only what is written), loop-mounted ``nosuid,nodev``
on the workspace directory. A full workspace then fails a write with ``ENOSPC`` whatever
wrote it, and the sandbox's ``/proc/self/mountinfo`` shows the workspace as the root of
its own filesystem, not as a host path.

Mount namespaces: the gateway enters a private mount namespace at start
(``enter_private_mounts``), so the workspaces its sandboxes mount are seen by the gateway
and its children only, and vanish with them: a killed gateway leaves no mount behind. It
marks its environment (``PRIVATE_MOUNTS_ENV``), and a sandbox server it starts mounts in that
shared namespace and leaves the mount for the gateway (whose files API reads outputs from
it). A sandbox server started on its own unmounts at exit. Readers outside the gateway see
the workspace through ``/proc/<gateway pid>/root/...`` while it runs, or mount the image.

Everything here degrades to nothing (a plain directory, the walked soft quota of ``quota``)
where it cannot work: not root, no ``mkfs.ext4``/``mount``, no loop device, or a workspace
that already holds files from before images were used.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from sandbox_server.identity import SandboxIdentity

log = logging.getLogger("tether.sandbox")

PRIVATE_MOUNTS_ENV = "TETHER_PRIVATE_MOUNTS"
"""Set to ``1`` by a process that entered its own mount namespace for its sandboxes' workspaces."""
IMAGE_SUFFIX = ".img"
AREA_SUFFIX = ".area"
"""Beside the workspace: which directory in it is the session area (``sandbox_server.placement``)."""
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime"
_CLONE_NEWNS = 0x00020000
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_TOOL_TIMEOUT = 30.0


def image_path(root: Path) -> Path:
    return root.with_name(root.name + IMAGE_SUFFIX)


def enter_private_mounts() -> bool:
    """Move this (still single-threaded) process into a private mount namespace; True on success.

    Only root can; anyone else keeps the host's namespace and plain workspace directories.
    """
    if os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        log.warning("no private mount namespace (%s); workspaces use the walked quota", _errno())
        return False
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        log.warning("could not make mounts private (%s)", _errno())
    os.environ[PRIVATE_MOUNTS_ENV] = "1"
    return True


STAGE_NAME = ".tether-stage"
"""The one directory (in the temp dir, 0711, root's) every root server mounts its own stage on."""


def stage(root: Path, cleanup: contextlib.ExitStack) -> Path | None:
    """Give a root server's sandbox identity a path to its workspace; returns the path to bind.

    bwrap runs as the unprivileged sandbox identity and must reach what it binds by path,
    but the workspace's ancestors (a data dir under ``/root``, say) may be closed to it. So
    the server moves into a private mount namespace of its own (it is still single-threaded
    here) and mounts a small tmpfs on ``/tmp/.tether-stage``, a directory anyone may traverse
    but not list, with the workspace bound inside; its temporary files (the egress proxy's
    directory) go there too, so what the sandbox's ``mountinfo`` shows of them names no host
    path. Every server mounts on the same directory, each in its own namespace, and the
    namespace, with every such mount, ends with the server: a killed server leaves nothing.
    Must run after ``attach``, which mounts in the namespace the server shares with its parent.

    The copy holds the other sessions' workspace mounts too; they cost nothing, and when a
    session is deleted the kernel detaches every copy of its mount as its directory goes.
    """
    if os.geteuid() != 0:
        return None
    place = _stage_dir()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), f"private mount namespace: {_errno()}")
    _run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0711,nosuid,nodev,noexec", "tether-stage", str(place)])
    cleanup.callback(_unstage, place)
    staged = place / "ws"
    staged.mkdir(mode=0o700)
    _run(["mount", "--bind", str(root), str(staged)])
    tempfile.tempdir = str(place)
    return staged


def _stage_dir() -> Path:
    """``/tmp/.tether-stage``, made once; refused unless it is root's own directory (``/tmp`` is
    sticky, so once it is, nobody else can replace it)."""
    place = Path(tempfile.gettempdir()) / STAGE_NAME
    with contextlib.suppress(FileExistsError):
        place.mkdir(mode=0o711)
    info = place.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o022:
        raise OSError(f"{place} is not a directory of root's that only root may change")
    return place


def _unstage(place: Path) -> None:
    """Take the stage down in our namespace (a clean exit; a killed server's namespace just ends)."""
    tempfile.tempdir = None
    _run(["umount", "-R", "-l", str(place)], check=False)


def detach_in(origin_ns_fd: int, root: Path) -> None:
    """Unmount ``root`` in the mount namespace ``origin_ns_fd`` (the one we left for our stage)."""
    _run(
        ["nsenter", f"--mount=/proc/self/fd/{origin_ns_fd}", "umount", "-l", str(root)],
        check=False,
        fds=(origin_ns_fd,),
    )


def _errno() -> str:
    return os.strerror(ctypes.get_errno())


def shared_with_parent() -> bool:
    """Whether our parent keeps workspace mounts (it entered a private namespace for them)."""
    return os.environ.get(PRIVATE_MOUNTS_ENV) == "1"


def is_attached(root: Path) -> bool:
    return os.path.ismount(root)


def attach(root: Path, size: int, owner: SandboxIdentity | None = None) -> bool:
    """Mount the workspace's image on ``root``, creating it for a new, empty workspace.

    Returns whether ``root`` is now a size-limited filesystem. Concurrent attaches (a sandbox
    and the files API, two replicas on one host) are serialised by a lock on the image, and
    ``mount -o loop`` reuses a loop device already backed by the image, so one image is never
    behind two block devices.
    """
    if os.geteuid() != 0:
        return False
    if is_attached(root):
        return True
    image = image_path(root)
    if not image.exists() and not _can_create(root):
        return False
    try:
        fd = os.open(image, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        log.warning("workspace image %s: %s; using the walked quota", image.name, exc.strerror)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if is_attached(root):
            return True
        if os.fstat(fd).st_nlink == 0:
            return False  # removed (``remove``) while we waited for the lock
        if os.fstat(fd).st_size == 0:
            os.ftruncate(fd, size)
            _run(
                ["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", *_owner_option(owner), str(image)]
            )
        _run(["mount", "-o", MOUNT_OPTIONS, str(image), str(root)])
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("workspace image %s could not be mounted (%s); using the walked quota", image.name, exc)
        if os.fstat(fd).st_size and not _has_filesystem(image):
            os.unlink(image)  # a half-made image would block every later attempt
        return False
    finally:
        os.close(fd)
    _remove_lost_found(root)
    return True


def attach_existing(root: Path) -> bool:
    """Mount ``root``'s image if it has one (the files API reading a workspace whose sandbox is gone)."""
    if is_attached(root):
        return True
    if os.geteuid() != 0 or not image_path(root).is_file():
        return False
    return attach(root, 0)


def detach(root: Path) -> None:
    """Unmount the workspace (lazily: an open file keeps the filesystem until it is closed)."""
    if is_attached(root):
        _run(["umount", "-l", str(root)], check=False)


def remove(root: Path) -> None:
    """Delete the workspace: unmount it, then remove the directory and the image.

    Holds the image's lock throughout, so a concurrent ``attach`` (the files API) cannot
    mount it again half-way; it finds the image unlinked and gives up.
    """
    try:
        fd: int | None = os.open(image_path(root), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        detach(root)
        shutil.rmtree(root, ignore_errors=True)
        image_path(root).unlink(missing_ok=True)
        root.with_name(root.name + AREA_SUFFIX).unlink(missing_ok=True)
    finally:
        if fd is not None:
            os.close(fd)


def capacity(root: Path) -> tuple[int, int] | None:
    """``(used, free)`` bytes of the workspace's own filesystem, or None if it has none."""
    if not is_attached(root):
        return None
    stats = os.statvfs(root)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize, stats.f_bavail * stats.f_frsize


def _can_create(root: Path) -> bool:
    """A new image only for an empty workspace: files of a plain workspace are never hidden under a mount."""
    if shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        return False
    try:
        with os.scandir(root) as entries:
            return next(entries, None) is None
    except OSError:
        return False


def _owner_option(owner: SandboxIdentity | None) -> list[str]:
    return ["-E", f"root_owner={owner.uid}:{owner.gid}"] if owner is not None else []


def _has_filesystem(image: Path) -> bool:
    with open(image, "rb") as handle:
        handle.seek(1024 + 56)
        return handle.read(2) == b"\x53\xef"  # the ext2/3/4 superblock magic


def _remove_lost_found(root: Path) -> None:
    """mkfs leaves ``lost+found``; the model's workspace starts empty (fsck recreates it if needed)."""
    try:
        os.rmdir(root / "lost+found")
    except OSError:
        pass


def _run(argv: list[str], *, check: bool = True, fds: tuple[int, ...] = ()) -> None:
    completed = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_TOOL_TIMEOUT,
        check=False,
        pass_fds=fds,
    )
    if check and completed.returncode != 0:
        raise subprocess.SubprocessError(f"{argv[0]}: {(completed.stderr or completed.stdout).strip()}")
