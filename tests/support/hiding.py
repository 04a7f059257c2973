"""Run a command as if some installed programs were not: a machine without bubblewrap, say.

Nothing is uninstalled. The command runs in a mount namespace of its own where each hidden
path has ``/dev/null`` bound over it (a character device nobody may execute), so neither
``PATH`` nor a fixed path finds it, and the rest of the host sees nothing. Root unshares the
mount namespace directly. Anyone else first becomes root of a user namespace of its own
(allowed to mount there), hides the paths, then maps itself back to its own uid in a nested
user namespace, so the command runs unprivileged, as it would have.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path


def installed(program: str, fixed: Sequence[str] = ()) -> list[str]:
    """Every place ``program`` would be found: each ``PATH`` entry holding it, and ``fixed`` paths."""
    found = [str(Path(entry) / program) for entry in os.environ.get("PATH", "").split(os.pathsep) if entry]
    found += list(fixed)
    return sorted({path for path in found if os.path.isfile(path)})


def hiding(paths: Sequence[str]) -> list[str]:
    """A command prefix (it ends by exec'ing the rest, so the pid is the command's) hiding ``paths``."""
    if shutil.which("unshare") is None:
        raise RuntimeError("hiding programs needs util-linux's unshare")
    binds = "".join(f"mount --bind /dev/null {shlex.quote(path)} && " for path in paths)
    if os.geteuid() == 0:
        return ["unshare", "--mount", "sh", "-c", binds + 'exec "$@"', "sh"]
    back = f"exec unshare --user --map-user={os.getuid()} --map-group={os.getgid()} "
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", binds + back + '"$@"', "sh"]
