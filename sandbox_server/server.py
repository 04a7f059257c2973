"""The sandbox MCP server: the agent toolset over one workspace, on stdio or streamable HTTP.

Tool names and input fields are those of the anthropic SDK's ``agent_toolset_20260401``
input types, so a harness can hand the model this server's tools unchanged. The tools
are thin: semantics live in ``file_tools`` (plain, unit-tested functions) and path
containment in ``workspace``. A failure the model should read comes back as a
``CallToolResult`` with ``is_error=True`` and the plain message (no SDK prefix);
anything unexpected is caught by ``MCPServer`` itself and reported as a generic
``is_error`` result, so no tool call can take the server down.

``bash`` is pluggable (``BashBackend``): bubblewrap by default (``bwrap``), Docker
where an engine runs (``docker_backend``). Where bubblewrap is not installed, ``bash``
answers with what to install and runs nothing, while the file tools, which never
needed it, work as ever (``backends``). ``write`` and ``edit`` share the
workspace disk quota with it (``quota``). With ``--egress limited|unrestricted``
the server also runs the sandbox's egress proxy (``sandbox_server.egress``), the
only way ``bash`` commands reach the network.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Protocol

from mcp.server import MCPServer
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field

from sandbox_server import auth, file_tools, launch, workspace_fs
from sandbox_server.backends import (
    BackendName,
    BackendUnavailable,
    bash_notice,
    make_bash_backend,
    resolve_backend,
)
from sandbox_server.bwrap import BubblewrapBash
from sandbox_server.docker_backend import DockerSettings
from sandbox_server.egress.config import TOKEN_ENV, EgressSettings, describe_network
from sandbox_server.egress.mount import EgressMount
from sandbox_server.identity import (
    DEFAULT_UID_RANGE,
    UID_RANGE_ENV,
    SandboxIdentity,
    claim_workspace,
    identity_for,
    parse_uid_range,
)
from sandbox_server.limits import SandboxLimits, format_seconds
from sandbox_server.placement import Placement
from sandbox_server.quota import DiskQuota, QuotaExceeded
from sandbox_server.results import text_result
from sandbox_server.transport import exit_on_sigterm, serve_toolset
from sandbox_server.workspace import WORKSPACE_MOUNT, Workspace

SERVER_NAME = "tether-sandbox"
BASH_UNAVAILABLE = "bash is not available in this sandbox"
NO_NETWORK = "There is no network access."


__all__ = ["BashBackend", "UnavailableBash", "build_server", "run", "text_result"]


class BashBackend(Protocol):
    """Runs the ``bash`` tool (``bwrap.BubblewrapBash``, ``docker_backend.DockerBash``)."""

    async def run(self, command: str | None, restart: bool, timeout_ms: int | None) -> CallToolResult: ...


class UnavailableBash:
    """A backend for servers that must not run commands: every call is an error result the model can read."""

    async def run(self, command: str | None, restart: bool, timeout_ms: int | None) -> CallToolResult:
        return text_result(BASH_UNAVAILABLE, is_error=True)


def _run_tool(action: Callable[[], str]) -> CallToolResult:
    """Run one file tool, turning its ``ToolError`` into an ``is_error`` result with the bare message."""
    try:
        return text_result(action())
    except (file_tools.ToolError, QuotaExceeded) as exc:
        return text_result(str(exc), is_error=True)


def _current_size(ws: Workspace, file_path: str) -> int:
    """Size of the file ``write`` would replace (0 if absent or unreachable: ``write`` reports that)."""
    with contextlib.suppress(Exception):
        return ws.stat_path(ws.relative(file_path), shown=file_path).st_size
    return 0


_PATH_RULES = (
    f"Paths are relative to {WORKSPACE_MOUNT} or absolute under it; "
    "nothing outside the workspace can be reached, symlinks included."
)

GlobPath = Annotated[
    str | None,
    Field(description=f"Optional directory root to search under. Defaults to {WORKSPACE_MOUNT}."),
]


def build_server(
    workspace: Path,
    *,
    bash_backend: BashBackend | None = None,
    limits: SandboxLimits | None = None,
    network: str = NO_NETWORK,
    owner: tuple[int, int] | None = None,
) -> MCPServer:
    """Build the MCP server for ``workspace`` (created if missing).

    ``bash_backend`` runs the ``bash`` tool; by default a ``BubblewrapBash`` with
    ``limits``, which starts nothing until the first command, so building a server
    just to list its tools is cheap. ``limits.disk_quota`` also bounds ``write``
    and ``edit``. ``network`` is the sentence telling the model what network
    ``bash`` has (``egress.config.describe_network``). ``owner`` receives what the file tools
    create (a root server's sandbox identity, so its commands may change those files).
    """
    ws = Workspace.open(workspace, owner=owner)
    limits = limits or SandboxLimits()
    backend: BashBackend = bash_backend if bash_backend is not None else BubblewrapBash(ws, limits)
    quota = DiskQuota(ws.root, limits.disk_quota)
    server: MCPServer = MCPServer(
        SERVER_NAME,
        instructions=f"Tools over the agent's workspace, mounted at {WORKSPACE_MOUNT}. {_PATH_RULES}",
        log_level="WARNING",
    )

    @server.tool(
        description=(
            "Read a text file. Lines are numbered like `cat -n` (line number, a tab, the line). "
            "Use view_range to read part of a long file; output is capped at "
            f"{file_tools.MAX_OUTPUT_BYTES // 1024} KB with a note saying where to continue. {_PATH_RULES}"
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    def read(
        file_path: Annotated[str, Field(description="Path of the file to read.")],
        view_range: Annotated[
            list[int] | None,
            Field(
                description=(
                    "Optional [start_line, end_line] 1-indexed inclusive range. When omitted the entire "
                    'file is returned. end_line of 0 or negative means "to end of file".'
                )
            ),
        ] = None,
    ) -> CallToolResult:
        return _run_tool(lambda: file_tools.read(ws, file_path, view_range))

    @server.tool(
        description=(
            "Write a file, replacing its entire contents (or creating it, with any missing parent "
            f"directories). {_PATH_RULES}"
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False),
    )
    def write(
        file_path: Annotated[str, Field(description="Path of the file to write.")],
        content: Annotated[str, Field(description="Full file contents to write.")],
    ) -> CallToolResult:
        def action() -> str:
            quota.ensure_room(len(content.encode("utf-8")) - _current_size(ws, file_path))
            return file_tools.write(ws, file_path, content)

        return _run_tool(action)

    @server.tool(
        description=(
            "Replace text in a file. old_string must match the file exactly (whitespace included) "
            "and occur exactly once, unless replace_all is true. Reports how many replacements were "
            f"made. {_PATH_RULES}"
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False),
    )
    def edit(
        file_path: Annotated[str, Field(description="Path of the file to edit.")],
        old_string: Annotated[str, Field(description="Substring to find and replace.")],
        new_string: Annotated[str, Field(description="Replacement text.")],
        replace_all: Annotated[
            bool | None,
            Field(
                description=(
                    "When true, replace every occurrence of old_string instead of requiring a unique match."
                )
            ),
        ] = None,
    ) -> CallToolResult:
        def action() -> str:
            # At least one occurrence changes; more only makes the real growth larger.
            quota.ensure_room(len(new_string.encode("utf-8")) - len(old_string.encode("utf-8")))
            return file_tools.edit(ws, file_path, old_string, new_string, replace_all)

        return _run_tool(action)

    @server.tool(
        description=(
            "List files matching a doublestar glob pattern (`*` and `?` within one path segment, `**` "
            "across segments, `[abc]`, `{a,b}`), newest first, as absolute /workspace paths. "
            f"At most {file_tools.MAX_GLOB_RESULTS} paths are listed. {_PATH_RULES}"
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    def glob(
        pattern: Annotated[
            str,
            Field(
                description=(
                    "Doublestar glob pattern (e.g. `**/*.go`). "
                    f"Absolute patterns must be under {WORKSPACE_MOUNT}."
                )
            ),
        ],
        path: GlobPath = None,
    ) -> CallToolResult:
        return _run_tool(lambda: file_tools.glob(ws, pattern, path))

    @server.tool(
        description=(
            "Search file contents for a regular expression (Python `re` syntax; prefix `(?i)` for "
            "case-insensitive). Returns matching lines as `path:line_number:text`. `path` may be a "
            "directory (searched recursively; binary files and .git are skipped) or a single file. "
            f"Output is capped at {file_tools.MAX_OUTPUT_BYTES // 1024} KB. {_PATH_RULES}"
        ),
        annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    def grep(
        pattern: Annotated[str, Field(description="Regular expression to search for.")],
        path: Annotated[
            str | None,
            Field(
                description=(
                    f"Optional directory root to search under (or one file). Defaults to {WORKSPACE_MOUNT}."
                )
            ),
        ] = None,
    ) -> CallToolResult:
        return _run_tool(lambda: file_tools.grep(ws, pattern, path))

    @server.tool(
        description=(
            f"Run a shell command with bash in an isolated sandbox over the workspace ({WORKSPACE_MOUNT}); "
            "stdout and stderr are returned together, followed by the exit code when it is not 0. "
            "The working directory carries over between calls; variables and background processes do "
            "not (each command runs in a fresh shell and everything it started is stopped when it "
            f"returns). {network} Commands time out after "
            f"{format_seconds(limits.timeout)} s unless timeout_ms says otherwise (at most "
            f"{format_seconds(limits.max_timeout)} s); long output is shortened in the middle. "
            f"Set restart to true (without command) to go back to {WORKSPACE_MOUNT}."
        ),
        annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True),
    )
    async def bash(
        command: Annotated[
            str | None, Field(description="Shell command to execute. Omit only when restart is true.")
        ] = None,
        restart: Annotated[
            bool | None,
            Field(description="When true, restart the persistent bash session instead of running a command."),
        ] = None,
        timeout_ms: Annotated[
            int | None,
            Field(description="Per-call timeout in milliseconds. Defaults to the sandbox-wide tool timeout."),
        ] = None,
    ) -> CallToolResult:
        return await backend.run(command, bool(restart), timeout_ms)

    return server


def run(
    workspace: Path,
    host: str,
    port: int,
    stdio: bool,
    *,
    limits: SandboxLimits | None = None,
    backend: BackendName = "bwrap",
    docker_settings: DockerSettings | None = None,
    egress: EgressSettings | None = None,
) -> None:
    """Serve the toolset for ``workspace``: over stdin/stdout, or streamable HTTP at ``/mcp``.

    The HTTP app is served directly (not mounted), so its own lifespan runs the
    session manager; ``gateway.serving.serve`` prints the ready line. A Docker backend
    that cannot run here, or an egress proxy that cannot start (credentials
    unreachable, say), ends the process with a message before anything is served;
    missing bubblewrap is said once on stderr (by the starter instead, for a server it
    started) and the file tools are served.
    """
    exit_on_sigterm()
    limits = limits or SandboxLimits()
    egress = egress or EgressSettings()
    token = os.environ.pop(TOKEN_ENV, None)  # read once; never inherited by anything started later
    sandbox_token = auth.take_token()  # who may call the tools over HTTP; popped like the egress token
    ws = Workspace.open(workspace)
    with contextlib.ExitStack() as cleanup:
        # The sandbox identity, the workspace's filesystem and the stage are bubblewrap's: a
        # Docker engine runs its containers as its own user, from the host's view of the path.
        concrete = resolve_backend(backend, egress=egress.enabled)
        if concrete == "bwrap":
            identity, bind_root = _claim_workspace(ws, limits, cleanup)
        else:
            identity, bind_root = SandboxIdentity(os.geteuid(), os.getegid()), ws.root
        mount = None
        network = NO_NETWORK
        if egress.enabled:
            if backend == "docker":
                sys.exit("tether sandbox: --egress is only supported on the bwrap backend")
            # Imported here: the proxy's TLS stack is only loaded by sandboxes that have a network.
            from sandbox_server.egress.service import EgressService, EgressStartError, configure_logging

            configure_logging()
            try:
                service = EgressService.start(egress, token=token)
            except EgressStartError as exc:
                sys.exit(f"tether sandbox: egress: {exc}")
            cleanup.callback(service.close)
            mount = service.mount
            _hand_over(mount, identity)
            network = describe_network(egress, list(service.vault.environment()))
        try:
            bash = make_bash_backend(
                concrete,
                ws.root,
                limits,
                docker_settings=docker_settings,
                egress=mount,
                identity=identity,
                bind_root=bind_root,
            )
        except BackendUnavailable as exc:
            sys.exit(f"tether sandbox: the {backend} backend is unavailable: {exc}")
        notice = bash_notice(["--backend", concrete])
        if notice is not None and not launch.started_for_parent():
            print(f"tether sandbox: {notice}", file=sys.stderr, flush=True)  # a starter says it itself
        close = getattr(bash, "close", None)
        if close is not None:
            cleanup.callback(close)
        owner = None if identity.is_current else (identity.uid, identity.gid)
        server = build_server(ws.root, bash_backend=bash, limits=limits, network=network, owner=owner)
        placement = None
        if concrete == "bwrap":  # the area is masked in bubblewrap's commands only
            placement = Placement(Workspace.open(ws.root, create=False, owner=owner))
            placement.ensure_area()  # before any command, so the agent never sees it unmasked
        serve_toolset(server, host, port, stdio, sandbox_token, placement)


def _claim_workspace(
    ws: Workspace, limits: SandboxLimits, cleanup: contextlib.ExitStack
) -> tuple[SandboxIdentity, Path]:
    """Give the workspace its own size-limited filesystem where possible, and to the sandbox's identity.

    Returns the identity and the path bwrap binds (a root server's stage, ``workspace_fs.stage``).
    A server started by a gateway leaves the mount to the gateway; one started on its own
    takes it down on the way out, in the namespace it mounted it in.
    """
    uids = parse_uid_range(os.environ[UID_RANGE_ENV]) if os.environ.get(UID_RANGE_ENV) else DEFAULT_UID_RANGE
    identity = identity_for(ws.root.name, uids)
    attached_here = not workspace_fs.is_attached(ws.root) and workspace_fs.attach(
        ws.root, limits.disk_quota, identity
    )
    claim_workspace(str(ws.root), identity)
    if identity.is_current:
        return identity, ws.root
    if attached_here and not workspace_fs.shared_with_parent():
        origin = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        cleanup.callback(os.close, origin)
        cleanup.callback(workspace_fs.detach_in, origin, ws.root)
    staged = workspace_fs.stage(ws.root, cleanup)
    return identity, staged or ws.root


def _hand_over(mount: EgressMount, identity: SandboxIdentity) -> None:
    """Let the sandbox's identity reach the proxy: its directory and socket are the server's until now."""
    if identity.is_current:
        return
    os.chmod(mount.host_dir.parent, 0o711)  # traversable, not listable: bwrap reaches the directory by path
    for path in (mount.host_dir, mount.socket_path):
        os.chown(path, identity.uid, identity.gid, follow_symlinks=False)
