"""The ``bash`` tool's session semantics, shared by every backend.

Each command runs in a fresh sandboxed shell; what carries over between calls is
the working directory, like a terminal where every command is typed into a new
tab opened where the last one ended. Variables, functions and background jobs do
not survive a call (a background process is killed with its command), which keeps
every call independently bounded by the limits.

The command text is never spliced into shell code: it reaches ``bash -c`` as a
positional parameter, together with the saved working directory and the path to
report the final directory to (``SHELL_SCRIPT``). A command that ``exit``s skips
the report, so the previous directory is kept.

Results: output (stdout and stderr merged, capped) followed by bracketed status
lines. A non-zero exit is a normal result (``is_error`` false) ending in
``[exit code N]``: the command ran, and its status is information for the model.
Hitting a limit (time, output ceiling, memory, processes, disk) is ``is_error``
with a message naming the limit.
"""

from __future__ import annotations

import signal
from abc import ABC, abstractmethod
from pathlib import Path

import anyio
from mcp.types import CallToolResult

from sandbox_server.execution import RunningCommand, Stop, Supervised, supervise
from sandbox_server.limits import SandboxLimits, format_seconds, format_size
from sandbox_server.quota import DiskQuota
from sandbox_server.results import text_result
from sandbox_server.workspace import WORKSPACE_MOUNT, Workspace

SHELL_SCRIPT = f"""\
if ! cd -- "$1" 2>/dev/null; then
  printf 'tether: working directory %s is gone; running in {WORKSPACE_MOUNT}\\n' "$1" >&2
  cd {WORKSPACE_MOUNT} || exit 1
fi
tether_report=$3
tether_command=$2
shift 3
eval "$tether_command"
tether_status=$?
pwd >"$tether_report" 2>/dev/null
exit "$tether_status"
"""
"""``$1`` saved cwd, ``$2`` the command, ``$3`` where to write the final cwd."""

RESTARTED = f"Bash session restarted; the working directory is {WORKSPACE_MOUNT} again."
COMMAND_REQUIRED = "command is required (omit it only with restart: true)."
_MAX_CWD = 4096


def shell_argv(cwd: str, command: str, report_path: str, *, prelude: str = "") -> list[str]:
    """The argv that runs ``command`` from ``cwd`` and writes the final directory to ``report_path``.

    ``prelude`` is trusted shell code run first (the egress forwarder's start).
    """
    return ["bash", "-c", prelude + SHELL_SCRIPT, "bash", cwd, command, report_path]


def parse_reported_cwd(raw: bytes) -> str | None:
    """The directory ``SHELL_SCRIPT`` wrote, or ``None`` when nothing usable was written."""
    text = raw.decode("utf-8", errors="replace").removesuffix("\n")
    if not text.startswith("/") or "\x00" in text or len(text) > _MAX_CWD:
        return None
    return text


class LaunchError(Exception):
    """A command could not be started; the message is written for the model."""


class ShellSession(ABC):
    """A ``BashBackend`` minus the part that starts a sandboxed process (``_launch``).

    Commands of one session run one at a time, as they would in one shell.
    """

    def __init__(self, workspace: Path | Workspace, limits: SandboxLimits | None = None) -> None:
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
        self.limits = limits or SandboxLimits()
        self.quota = DiskQuota(self.workspace.root, self.limits.disk_quota, self.limits.disk_poll_interval)
        self.cwd = WORKSPACE_MOUNT
        self._lock = anyio.Lock()

    @abstractmethod
    async def _launch(self, cwd: str, command: str) -> RunningCommand:
        """Start ``shell_argv(cwd, command, ...)`` in the sandbox with ``self.limits`` applied."""

    async def run(self, command: str | None, restart: bool, timeout_ms: int | None) -> CallToolResult:
        if restart:
            self.cwd = WORKSPACE_MOUNT
            if command is None:
                return text_result(RESTARTED)
        if command is None:
            return text_result(COMMAND_REQUIRED, is_error=True)
        timeout = self.limits.timeout_for(timeout_ms)
        async with self._lock:
            return await self._run_one(command, timeout)

    async def _run_one(self, command: str, timeout: float) -> CallToolResult:
        baseline = await anyio.to_thread.run_sync(self.quota.usage)
        try:
            running = await self._launch(self.cwd, command)
        except LaunchError as exc:
            return text_result(str(exc), is_error=True)
        result = await supervise(
            running,
            timeout=timeout,
            output_limit=self.limits.output_limit,
            output_ceiling=self.limits.output_ceiling,
            disk_watch=lambda: self.quota.watch(baseline),
        )
        if result.finished.cwd is not None:
            self.cwd = result.finished.cwd
        after = await anyio.to_thread.run_sync(self.quota.usage)
        return self._render(result, timeout, baseline, after)

    def _render(self, result: Supervised, timeout: float, baseline: int, after: int) -> CallToolResult:
        limits = self.limits
        errors: list[str] = []
        if result.stop is Stop.TIMEOUT:
            errors.append(
                f"Command timed out after {format_seconds(timeout)} s; "
                "it and every process it started were killed."
            )
        elif result.stop is Stop.OUTPUT_CEILING:
            errors.append(
                f"Command printed more than {format_size(limits.output_ceiling)} of output and was killed."
            )
        elif result.stop is Stop.DISK_QUOTA:
            used = format_size(result.disk_usage or after)
            errors.append(
                f"Command was killed: the workspace grew to {used}, over {self.quota.describe()}. "
                "Delete files to make room."
            )
        if self.quota.is_full():
            errors.append(
                f"The workspace is full: it reached {self.quota.describe()}, and writes now fail "
                "with 'No space left on device'. Delete files to make room."
            )
        if result.finished.memory_exceeded:
            errors.append(
                f"Command ran out of memory (limit {format_size(limits.memory)}); "
                "the kernel killed it or one of its processes."
            )
        if result.finished.pids_exceeded:
            errors.append(
                f"Command reached the process limit ({limits.pids}); some processes could not be started."
            )
        if result.exit_code == 128 + signal.SIGXFSZ and result.stop is None:
            errors.append(
                f"A file reached the size limit of {format_size(limits.disk_quota)} "
                f"({self.quota.describe()})."
            )
        if result.stop is not Stop.DISK_QUOTA and after > max(self.quota.limit, baseline):
            errors.append(
                f"The workspace now uses {format_size(after)}, over {self.quota.describe()}. "
                "Delete files to make room; until then commands may only shrink it."
            )
        lines = [f"[error: {e}]" for e in errors]
        if not errors and after > self.quota.limit:
            lines.append(
                f"[note: the workspace uses {format_size(after)}, over {self.quota.describe()}; "
                "commands may only shrink it until files are deleted]"
            )
        if result.stop is None and result.exit_code:
            lines.insert(0, f"[exit code {_describe_status(result.exit_code)}]")
        text = result.output.text()
        if not text and not lines:
            text = "(no output)"
        elif text and lines and not text.endswith("\n"):
            text += "\n"
        return text_result(text + "\n".join(lines), is_error=bool(errors))


def _describe_status(code: int) -> str:
    """``2``, or ``137 (SIGKILL)`` for a shell's report of a process killed by a signal."""
    number = -code if code < 0 else code - 128 if code > 128 else 0
    try:
        name = signal.Signals(number).name if number else ""
    except ValueError:
        name = ""
    return f"{code} ({name})" if name else str(code)
