"""Who a sandbox is on the host: never root, and when the server is root, nobody else either.

bubblewrap started by root with ``--uid 1000`` maps the sandbox's uid 1000 to host uid 0: the
model would hold root's rights over everything it can see (a writable ``/proc/sys``,
setuid bits on workspace files). So when the server runs as root, every command drops to an
unprivileged host uid/gid *before* bwrap starts (``drop_privileges``, in the child between
fork and exec), with no supplementary groups and ``no_new_privs``; bwrap, then an ordinary
user, maps uid 1000 inside onto that uid. The uid comes from a configurable range, one per
workspace (a stable hash of its name, so a restarted sandbox finds its files its own), and
the workspace root is owned by it with mode 0700. When the server is not root, the sandbox
runs as the server's own uid, which is all an unprivileged bwrap can map.

Two workspaces may hash to the same uid (1 in ``len(range)``); that costs little, since each
sandbox sees only its own workspace, its own pid namespace and no other user's files.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import stat
from dataclasses import dataclass

from sandbox_server import beneath

DEFAULT_UID_RANGE = range(1_000_000, 2_000_000)
"""Host uids handed to sandboxes when the server is root (``--uid-range``); far from real accounts."""
UID_RANGE_ENV = "TETHER_SANDBOX_UIDS"

_PR_SET_NO_NEW_PRIVS = 38
_LIBC = ctypes.CDLL(None, use_errno=True)
"""Loaded once here, not in the forked child where ``drop_privileges`` runs."""


@dataclass(frozen=True)
class SandboxIdentity:
    """The host uid and gid a sandbox's processes run as."""

    uid: int
    gid: int

    @property
    def is_current(self) -> bool:
        """True when this is the server's own identity (an unprivileged server): nothing to drop."""
        return self.uid == os.geteuid() and self.gid == os.getegid()


def parse_uid_range(text: str) -> range:
    """``"1000000-1999999"`` -> a range of host uids (inclusive bounds); ``ValueError`` if unusable."""
    low_text, sep, high_text = text.strip().partition("-")
    try:
        low, high = int(low_text), int(high_text) if sep else int(low_text)
    except ValueError:
        raise ValueError(f"not a uid range: {text!r} (use e.g. 1000000-1999999)") from None
    if low < 1000 or high < low or high >= 2**32 - 2:
        raise ValueError(f"uid range {text!r} must lie within 1000..4294967293, low to high")
    return range(low, high + 1)


def identity_for(workspace_name: str, uids: range = DEFAULT_UID_RANGE) -> SandboxIdentity:
    """The identity of the sandbox over ``workspace_name``: a host uid from ``uids`` if root, else our own."""
    if os.geteuid() != 0:
        return SandboxIdentity(os.geteuid(), os.getegid())
    digest = hashlib.sha256(workspace_name.encode()).digest()
    uid = uids[int.from_bytes(digest[:8], "big") % len(uids)]
    return SandboxIdentity(uid, uid)


def drop_privileges(identity: SandboxIdentity) -> None:
    """Become ``identity`` for good, with no groups and ``no_new_privs``; for a child before exec.

    ``setresuid`` clears every capability (permitted, effective and ambient) when leaving
    uid 0, and ``no_new_privs`` stops a setuid binary from giving any back.
    """
    if not identity.is_current:
        os.setgroups([])
        os.setresgid(identity.gid, identity.gid, identity.gid)
        os.setresuid(identity.uid, identity.uid, identity.uid)
    if _LIBC.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def claim_workspace(root: str, identity: SandboxIdentity) -> None:
    """Give the workspace to ``identity``: the root 0700, and everything in it, without following links.

    Runs before the sandbox starts, when none of the model's processes should be left to race
    it; the walk goes through directory descriptors opened ``O_NOFOLLOW|O_DIRECTORY``
    (``beneath.walk``) regardless, so a symlink in the tree is re-owned itself and never
    followed, and no device or FIFO is ever opened. Cheap when the root is already ``identity``'s.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        already = (info.st_uid, info.st_gid) == (identity.uid, identity.gid)
        if not already and os.geteuid() == 0:
            for entry in beneath.walk(fd):
                with contextlib.suppress(FileNotFoundError):
                    os.chown(
                        entry.name, identity.uid, identity.gid, dir_fd=entry.dir_fd, follow_symlinks=False
                    )
            os.fchown(fd, identity.uid, identity.gid)
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
