"""Resource limits of one sandbox, with the ``tether sandbox`` flags that set them.

One frozen value object travels from the command line to every backend, so the
bubblewrap and Docker backends enforce the same numbers and the file tools share
the disk quota with ``bash``. Defaults suit an interactive coding agent: long
enough for a test suite, small enough that one runaway command cannot starve the
machine or flood the model's context.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}


@dataclass(frozen=True)
class SandboxLimits:
    """What one ``bash`` command (and the workspace it writes) may consume.

    Sizes are bytes, times seconds. ``output_limit`` is what the model gets back
    (head and tail kept, the middle replaced by a marker); ``output_ceiling`` is
    how much the server reads at all before it kills the command, so a command
    printing forever costs bounded memory and time.
    """

    timeout: float = 120.0
    """Default wall-clock limit per command; the model's ``timeout_ms`` replaces it."""
    max_timeout: float = 600.0
    """Upper bound on what the model may ask for with ``timeout_ms``."""
    output_limit: int = 30_000
    """Bytes of output returned to the model (roughly characters for text)."""
    output_ceiling: int = 16 * MiB
    """Bytes of output read before the command is killed."""
    memory: int = 1 * GiB
    """Memory of all processes of one command (cgroup), or address space per process (rlimit fallback)."""
    pids: int = 256
    """Processes and threads alive at once within one command."""
    disk_quota: int = 1 * GiB
    """Workspace size (allocated blocks); also the largest single file a command may write."""
    tmp_size: int = 256 * MiB
    """Size of the private ``/tmp`` tmpfs of a command (its pages also count as memory)."""
    disk_poll_interval: float = 0.1
    """How often the workspace size is measured while a command runs (the quota is soft by this much)."""

    def __post_init__(self) -> None:
        for name in ("timeout", "max_timeout", "disk_poll_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("output_limit", "output_ceiling", "memory", "pids", "disk_quota", "tmp_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.timeout > self.max_timeout:
            raise ValueError("timeout must not exceed max_timeout")
        if self.output_limit > self.output_ceiling:
            raise ValueError("output_limit must not exceed output_ceiling")

    def timeout_for(self, timeout_ms: int | None) -> float:
        """The wall-clock limit for one call: the model's ``timeout_ms`` if positive, capped at ``max_timeout``.

        The SDK documents an omitted or zero ``timeout_ms`` as "use the default";
        a negative one is treated the same rather than failing the call.
        """
        if timeout_ms is None or timeout_ms <= 0:
            return self.timeout
        return min(timeout_ms / 1000, self.max_timeout)


def parse_size(text: str) -> int:
    """``"1G"``, ``"512MiB"``, ``"30000"`` -> bytes (binary units); for argparse ``type=``."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 30000, 512K, 16M, 1G)")
    value = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def format_size(value: int) -> str:
    """Bytes as the model should read them: ``1 GiB``, ``16 MiB``, ``512 KiB``, ``900 bytes``."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if value >= size:
            amount = value / size
            return f"{amount:.0f} {unit}" if amount == int(amount) else f"{amount:.1f} {unit}"
    return f"{value} bytes"


def format_seconds(value: float) -> str:
    """``3`` for whole seconds, ``0.5`` otherwise: what the model reads in a timeout message."""
    return f"{value:.0f}" if value == int(value) else f"{value:g}"


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per ``SandboxLimits`` field to ``tether sandbox``; defaults come from the dataclass."""
    d = SandboxLimits()
    group = parser.add_argument_group("limits (sizes accept K, M, G suffixes; binary units)")
    group.add_argument(
        "--timeout", type=float, default=d.timeout, help="default seconds per command (default %(default)s)"
    )
    group.add_argument(
        "--max-timeout",
        type=float,
        default=d.max_timeout,
        help="largest timeout_ms the model may ask for, in seconds (default %(default)s)",
    )
    group.add_argument(
        "--output-limit",
        type=parse_size,
        default=d.output_limit,
        help="bytes of output returned to the model, head and tail kept (default %(default)s)",
    )
    group.add_argument(
        "--output-ceiling",
        type=parse_size,
        default=d.output_ceiling,
        help="bytes of output read before the command is killed (default 16M)",
    )
    group.add_argument("--memory", type=parse_size, default=d.memory, help="memory per command (default 1G)")
    group.add_argument("--pids", type=int, default=d.pids, help="processes per command (default %(default)s)")
    group.add_argument(
        "--disk-quota", type=parse_size, default=d.disk_quota, help="workspace disk quota (default 1G)"
    )
    group.add_argument(
        "--tmp-size", type=parse_size, default=d.tmp_size, help="size of each command's /tmp (default 256M)"
    )
    group.add_argument(
        "--disk-poll-ms",
        type=float,
        default=d.disk_poll_interval * 1000,
        help="how often the disk quota is checked while a command runs (default %(default)s)",
    )


def limits_from_args(args: argparse.Namespace) -> SandboxLimits:
    """The ``SandboxLimits`` named by flags added with ``add_limit_arguments``."""
    return SandboxLimits(
        timeout=args.timeout,
        max_timeout=args.max_timeout,
        output_limit=args.output_limit,
        output_ceiling=args.output_ceiling,
        memory=args.memory,
        pids=args.pids,
        disk_quota=args.disk_quota,
        tmp_size=args.tmp_size,
        disk_poll_interval=args.disk_poll_ms / 1000,
    )
