"""The ``bwrap`` command line of one sandboxed command: what the sandbox sees.

Isolation (``bwrap_argv``): every namespace is unshared, so the command sees its own pid tree
(bwrap is pid 1), only a loopback interface, and a mount tree built from scratch: read-only
``/usr`` (and the ``/bin``, ``/lib``... links into it), a few read-only files of ``/etc`` plus
a generated ``passwd``/``group``/``hosts`` (handed to bwrap through pipes, so no file is left
on the host), a fresh ``/proc`` with the kernel's knobs read-only and its sensitive files
masked (``PROC_READ_ONLY``, ``PROC_MASKED``, as container runtimes do), a fresh ``/dev``, a
size-limited tmpfs ``/tmp``, and the workspace read-write (nosuid, nodev) at ``/workspace``.
Nothing else of the host (``/root``, ``/home``, ``/var``, ``/sys``, the server's own files)
exists inside. The command runs as uid 1000 in a user namespace, every capability dropped and
no further user namespaces allowed.

Host paths: none reaches the sandbox. The workspace and the egress directory are bound from
descriptors (``--bind-fd``), and bwrap reads its options from a memfd (``--args``), so
``/proc/1/cmdline`` shows ``bwrap --args N`` and the command, nothing of the host.

Environment: ``--clearenv`` plus a minimal set inside, and ``bwrap`` itself is started with an
*empty* environment (``BWRAP_ENV``): it is pid 1 of the sandbox, so ``/proc/1/environ`` shows
bwrap's own environment to the command.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from sandbox_server import beneath
from sandbox_server.limits import SandboxLimits
from sandbox_server.workspace import AREA_DIR, AREA_MOUNTED, MEMORY_MOUNT, SESSION_MOUNT, WORKSPACE_MOUNT

SANDBOX_UID = 1000
SANDBOX_HOSTNAME = "sandbox"
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_ENV = {
    "PATH": SANDBOX_PATH,
    "HOME": WORKSPACE_MOUNT,
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "USER": "sandbox",
}
BWRAP_ENV: dict[str, str] = {}
"""bwrap's own environment, visible inside as ``/proc/1/environ``: deliberately empty."""

ROOT_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
"""Top-level names that merged-/usr systems make symlinks into ``/usr`` (bound as-is otherwise)."""

ETC_FILES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "nsswitch.conf",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "mime.types",
    "magic",
    "magic.mime",
    "protocols",
    "services",
    "inputrc",
    "terminfo",
    "python3",
    "python3.11",
)
"""Host ``/etc`` entries bound read-only when present: what a shell, libc and common tools read."""

PROC_READ_ONLY = ("sys", "irq", "bus", "fs")
"""``/proc`` directories bound read-only over themselves: the kernel's knobs."""
PROC_MASKED = (
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "sysrq-trigger",
    "kallsyms",
    "config.gz",
    "acpi",
    "asound",
    "scsi",
    "driver",
)
"""``/proc`` entries hidden behind ``/dev/null`` (files) or an empty read-only tmpfs (directories)."""


def install_command() -> str:
    """The command that installs bubblewrap on this (Debian/Ubuntu) host: root runs apt-get
    itself, anyone else through sudo."""
    return ("" if os.geteuid() == 0 else "sudo ") + "apt-get install -y bubblewrap"


def not_installed() -> str:
    """What ``bash`` answers while bubblewrap is missing: commands never run without it, and a
    reader of the trail learns what to install (the next call finds it, no restart needed)."""
    return (
        "bash is unavailable: bubblewrap (bwrap) is not installed on the sandbox host, and "
        f"commands never run outside it. Install it with `{install_command()}`; bash works from "
        "the next call on. The file tools (read, write, edit, glob, grep) work meanwhile."
    )


def find_bwrap() -> str | None:
    """The ``bwrap`` executable on ``PATH`` (or in ``/usr/bin``), if installed."""
    found = shutil.which("bwrap")
    if found:
        return found
    return "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None


@cache
def _root_entries() -> tuple[tuple[str, str | None], ...]:
    """``(name, symlink target or None)`` for each of ``ROOT_LINKS`` present on the host."""
    entries: list[tuple[str, str | None]] = []
    for name in ROOT_LINKS:
        path = Path("/", name)
        if path.is_symlink():
            entries.append((name, os.readlink(path)))
        elif path.is_dir():
            entries.append((name, None))
    return tuple(entries)


@cache
def _proc_entries() -> tuple[list[str], list[str], list[str]]:
    """``(read-only dirs, masked files, masked dirs)`` among ``PROC_*`` that this kernel's ``/proc`` has."""
    read_only = [name for name in PROC_READ_ONLY if os.path.isdir(f"/proc/{name}")]
    files = [name for name in PROC_MASKED if os.path.isfile(f"/proc/{name}")]
    dirs = [name for name in PROC_MASKED if os.path.isdir(f"/proc/{name}")]
    return read_only, files, dirs


def proc_args() -> list[str]:
    """Mounts over the fresh ``/proc``: knobs read-only, sensitive entries masked."""
    read_only, files, dirs = _proc_entries()
    args: list[str] = []
    for name in read_only:
        args += ["--ro-bind", f"/proc/{name}", f"/proc/{name}"]
    for name in files:
        args += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    for name in dirs:
        args += ["--perms", "0555", "--tmpfs", f"/proc/{name}", "--remount-ro", f"/proc/{name}"]
    return args


def _generated_etc(uid: int) -> dict[str, str]:
    """``/etc`` files written for the sandbox rather than copied from the host (no host accounts leak)."""
    return {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{uid}:{uid}:sandbox:{WORKSPACE_MOUNT}:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{uid}:\nnogroup:x:65534:\n",
        "hosts": f"127.0.0.1\tlocalhost {SANDBOX_HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": f"{SANDBOX_HOSTNAME}\n",
    }


def etc_pipes(uid: int | None) -> dict[str, int]:
    """Read ends of pipes holding the generated ``/etc`` files, for ``--ro-bind-data`` (closed by the caller).

    Each file is far smaller than a pipe buffer, so it is written whole before
    bwrap starts and no temporary file ever exists on the host.
    """
    fds: dict[str, int] = {}
    try:
        for name, text in sorted(_generated_etc(uid or 0).items()):
            read_fd, write_fd = os.pipe()
            fds[name] = read_fd
            try:
                os.write(write_fd, text.encode())
            finally:
                os.close(write_fd)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def bwrap_argv(
    bwrap: str,
    *,
    workspace_fd: int,
    etc_fds: Mapping[str, int],
    limits: SandboxLimits,
    inner: Sequence[str],
    uid: int | None = SANDBOX_UID,
    extra_args: Sequence[str] = (),
    extra_env: Mapping[str, str] | None = None,
) -> list[str]:
    """The full ``bwrap`` command line for one sandboxed command (``inner``).

    Pure apart from looking at which of ``/bin``, ``/lib``... exist on the host,
    so the benchmark can time exactly what the server runs. ``workspace_fd`` is an
    ``O_PATH`` descriptor of the workspace (``open_workspace_fd``); ``etc_fds`` maps
    generated ``/etc`` file names to readable descriptors (``etc_pipes``).
    ``uid=None`` skips the user namespace (the command then runs as root without
    capabilities). ``extra_args`` (more mounts) follow the workspace bind and
    ``extra_env`` is set after the defaults: the egress proxy's additions.
    """
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if uid is not None:
        argv += ["--unshare-user", "--disable-userns", "--uid", str(uid), "--gid", str(uid)]
    argv += ["--hostname", SANDBOX_HOSTNAME, "--ro-bind", "/usr", "/usr"]
    for name, target in _root_entries():
        if target is None:
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
        else:
            argv += ["--symlink", target, f"/{name}"]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name, fd in sorted(etc_fds.items()):
        argv += ["--perms", "0644", "--ro-bind-data", str(fd), f"/etc/{name}"]
    argv += [
        "--proc", "/proc",
        *proc_args(),
        "--dev", "/dev",
        "--size", str(limits.tmp_size), "--perms", "1777", "--tmpfs", "/tmp",
        "--bind-fd", str(workspace_fd), WORKSPACE_MOUNT,
        *extra_args,
        "--chdir", WORKSPACE_MOUNT,
        "--clearenv",
    ]  # fmt: skip
    for key, value in {**SANDBOX_ENV, **(extra_env or {})}.items():
        argv += ["--setenv", key, value]
    argv += ["--", *inner]
    return argv


def session_area_fd(workspace_fd: int) -> int | None:
    """An ``O_PATH`` descriptor of the session's resources (``AREA_MOUNTED``), if the gateway has
    placed any: looked up per command, beneath the workspace and never through a symlink."""
    try:
        return beneath.open_beneath(
            workspace_fd, AREA_MOUNTED, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, symlinks=False
        )
    except OSError:
        return None


def session_area_args(area_fd: int) -> list[str]:
    """The area read-only at ``SESSION_MOUNT``, its workspace entry masked: a mount point, so the
    agent can neither see the server's bookkeeping nor rename the entry away while it runs."""
    masked = f"{WORKSPACE_MOUNT}/{AREA_DIR}"
    return [
        "--ro-bind-fd", str(area_fd), SESSION_MOUNT,
        "--perms", "0555", "--tmpfs", masked, "--remount-ro", masked,
    ]  # fmt: skip


def memory_args(mounts: Sequence[tuple[str, str, int]]) -> list[str]:
    """Each mounted memory store at ``MEMORY_MOUNT/<slug>``, writable only if ``read_write``."""
    args: list[str] = []
    for slug, access, fd in mounts:
        args += ["--bind-fd" if access == "read_write" else "--ro-bind-fd", str(fd), f"{MEMORY_MOUNT}/{slug}"]
    return args


def open_workspace_fd(root: Path) -> int:
    """An ``O_PATH`` descriptor of the workspace root for ``--bind-fd`` (the sandbox uid may not
    be able to walk the host path down to it, and the path must not show in bwrap's argv)."""
    return os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def args_memfd(argv: Sequence[str]) -> int:
    """A memfd holding ``argv`` NUL-separated, for ``bwrap --args FD`` (no size limit, no file)."""
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    try:
        data = b"".join(os.fsencode(arg) + b"\0" for arg in argv)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
