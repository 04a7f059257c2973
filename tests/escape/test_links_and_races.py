"""Links and races: nothing the model writes makes the server open a path outside the workspace.

The model can create symlinks anywhere in its workspace and swap a directory for one at any
moment. Three things open files on its behalf, and each is attacked here: the sandbox's file
tools (over MCP, with a host process flipping a parent between a directory and a symlink
out while hundreds of calls run), the gateway's files API (through the anthropic SDK, with
``outputs`` and its entries swapped for links to the gateway's own data directory, ``/etc``
and ``/``), and the disk quota's walker (trees too deep or too closed to walk by path).

Every test asserts that the attempt failed *and* that the host is unchanged: the outside
files still hold the same bytes and nothing new appeared next to them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult

from sandbox_server.quota import disk_usage
from tests.conftest import Scripts
from tests.escape.support import (
    Sandbox,
    bash,
    clear,
    flipping,
    requires_bwrap,
    seen_by,
    snapshot,
    still_answers,
    text,
)
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message

pytestmark = requires_bwrap

ATTEMPTS = 600
"""Overlapped ``write`` calls racing the flipper: enough to hit every window many times."""
RACING = 300
"""Calls of each other tool racing the flipper."""
CONCURRENCY = 24


def outside_directory(tmp_path: Path, secret: str, tokens: int) -> Iterator[Path]:
    """A host directory holding the secret under the names the attacks aim at (and ``t{i}.txt``
    for ``tokens`` racing calls); after the test it must be exactly as it was."""
    directory = tmp_path / "outside"
    directory.mkdir()
    for name in ("secret.txt", "data.txt", "report.txt", "only-outside.txt"):
        (directory / name).write_text(f"{secret} {name}\n")
    for i in range(tokens):
        (directory / f"t{i}.txt").write_text(f"token {secret}\n")
    before = snapshot(directory)
    yield directory
    assert snapshot(directory) == before, "a file outside the workspace was created, changed or removed"


@pytest.fixture
def outside(sandbox: Sandbox, tmp_path: Path) -> Iterator[Path]:
    yield from outside_directory(tmp_path, sandbox.secret, 0)


@pytest.fixture
def outside_tokens(sandbox: Sandbox, tmp_path: Path) -> Iterator[Path]:
    yield from outside_directory(tmp_path, sandbox.secret, RACING)


@pytest.fixture
def workspace(sandbox: Sandbox) -> Iterator[Path]:
    """The sandbox's workspace on the host, empty at the start and end of each test."""
    clear(sandbox.workspace)
    yield sandbox.workspace
    clear(sandbox.workspace)


def is_refusal(result: CallToolResult) -> bool:
    """A tool error that says the path was unusable (never one that shows what lay behind it)."""
    message = text(result)
    return result.is_error and any(
        phrase in message
        for phrase in ("outside the workspace", "does not exist", "not a directory", "No files matched")
    )


async def call_many(client: Client, calls: list[tuple[str, dict[str, Any]]]) -> list[CallToolResult]:
    """Run the calls overlapped, ``CONCURRENCY`` at a time, results in call order."""
    results: list[CallToolResult | None] = [None] * len(calls)
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(index: int, tool: str, arguments: dict[str, Any]) -> None:
        async with limiter:
            results[index] = await client.call_tool(tool, arguments)

    async with anyio.create_task_group() as group:
        for index, (tool, arguments) in enumerate(calls):
            group.start_soon(one, index, tool, arguments)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------- the file tools, links


@pytest.mark.anyio
async def test_traversal_and_symlinks_do_not_leave_the_workspace(client: Client, sandbox: Sandbox) -> None:
    traversal = await bash(client, f"cat /workspace/../../..{sandbox.secret_file}")
    assert "No such file or directory" in text(traversal)
    assert sandbox.secret not in text(traversal)

    links = await bash(
        client,
        f"ln -s {sandbox.secret_file} secret-link && ln -s /etc/passwd passwd-link "
        "&& ln -s ../../../.. up && cat secret-link; echo status=$?",
    )
    assert "status=1" in text(links), "inside the sandbox the host path does not exist"
    hardlink = await bash(client, "ln /etc/hostname hard-link")
    assert text(hardlink).endswith("[exit code 1]")
    assert not (sandbox.workspace / "hard-link").exists()

    for path in ("secret-link", "passwd-link", f"up{sandbox.secret_file}", "up/etc/shadow"):
        read = await client.call_tool("read", {"file_path": path})
        assert read.is_error, path
        assert "outside the workspace" in text(read), path
        assert sandbox.secret not in text(read)
    written = await client.call_tool("write", {"file_path": "secret-link", "content": "overwrite"})
    assert written.is_error
    assert sandbox.secret_file.read_text() == sandbox.secret + "\n"
    await bash(client, "rm -f secret-link passwd-link up")
    await still_answers(client)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("write", {"file_path": "out/new.txt", "content": "pwned"}),
        ("write", {"file_path": "out/a/b/new.txt", "content": "pwned"}),
        ("write", {"file_path": "up/outside/new.txt", "content": "pwned"}),
        ("write", {"file_path": "dangling.txt", "content": "pwned"}),
        ("write", {"file_path": "secret-link", "content": "pwned"}),
        ("edit", {"file_path": "secret-link", "old_string": "tether", "new_string": "pwned"}),
        ("edit", {"file_path": "out/data.txt", "old_string": "tether", "new_string": "pwned"}),
        ("read", {"file_path": "out/secret.txt"}),
        ("read", {"file_path": "proc-link"}),
        ("read", {"file_path": "sub/hop/outside/secret.txt"}),
        ("glob", {"pattern": "out/**"}),
        ("glob", {"pattern": "*", "path": "up/outside"}),
        ("grep", {"pattern": "tether", "path": "out"}),
        ("grep", {"pattern": "tether", "path": "secret-link"}),
    ],
)
async def test_links_out_are_refused_by_every_tool(
    client: Client, sandbox: Sandbox, workspace: Path, outside: Path, tool: str, arguments: dict[str, Any]
) -> None:
    (workspace / "out").symlink_to(outside)
    (workspace / "up").symlink_to("..")
    (workspace / "dangling.txt").symlink_to(outside / "created-through-a-link.txt")
    (workspace / "secret-link").symlink_to(outside / "secret.txt")
    (workspace / "proc-link").symlink_to(f"/proc/self/root{outside}/secret.txt")
    (workspace / "sub").mkdir()
    (workspace / "sub" / "hop").symlink_to("../up")  # a relative chain that ends above the root

    result = await client.call_tool(tool, arguments)

    assert result.is_error, text(result)
    assert "outside the workspace" in text(result)
    assert sandbox.secret not in text(result)
    assert str(outside) not in text(result) and str(workspace) not in text(result)


@pytest.mark.anyio
async def test_search_from_the_root_never_reports_what_links_point_at(
    client: Client, sandbox: Sandbox, workspace: Path, outside: Path
) -> None:
    (workspace / "own.txt").write_text("own text\n")
    (workspace / "out").symlink_to(outside)
    (workspace / "secret-link.txt").symlink_to(outside / "secret.txt")
    (workspace / "up").symlink_to("..")
    globbed = await client.call_tool("glob", {"pattern": "**"})
    assert text(globbed) == "/workspace/own.txt"
    grepped = await client.call_tool("grep", {"pattern": "tether|own"})
    assert text(grepped) == "/workspace/own.txt:1:own text\n"


# --------------------------------------------------------------------------- the file tools, races


def flip_pair(workspace: Path, outside: Path) -> None:
    """``flip`` (a real directory) and ``flip.swap`` (a symlink out), for ``flipping``."""
    (workspace / "flip").mkdir()
    (workspace / "flip.swap").symlink_to(outside)


@pytest.mark.anyio
async def test_writes_racing_a_parent_flipped_to_a_symlink_create_nothing_outside(
    client: Client, workspace: Path, outside: Path
) -> None:
    flip_pair(workspace, outside)
    calls = [
        ("write", {"file_path": f"flip/w{i}.txt" if i % 2 else f"flip/new{i}/deeper/w.txt", "content": "x"})
        for i in range(ATTEMPTS)
    ]
    with flipping(workspace, "flip", "flip.swap"):
        results = await call_many(client, calls)
    refused = [r for r in results if r.is_error]
    assert all(is_refusal(r) for r in refused), [text(r) for r in refused if not is_refusal(r)][:3]
    assert refused, "the flipper never got in the way: the race was not run"
    written = [r for r in results if not r.is_error]
    real = workspace / "flip" if not (workspace / "flip").is_symlink() else workspace / "flip.swap"
    assert len(list(real.rglob("*.txt"))) == len(written), "every reported write landed inside"


@pytest.mark.anyio
async def test_reads_racing_a_flipped_parent_never_return_outside_bytes(
    client: Client, sandbox: Sandbox, workspace: Path, outside_tokens: Path
) -> None:
    flip_pair(workspace, outside_tokens)
    for i in range(RACING):
        (workspace / "flip" / f"t{i}.txt").write_text("decoy\n")
    with flipping(workspace, "flip", "flip.swap"):
        results = await call_many(client, [("read", {"file_path": f"flip/t{i}.txt"}) for i in range(RACING)])
    for result in results:
        assert sandbox.secret not in text(result)
        assert text(result) == "     1\tdecoy\n" or is_refusal(result), text(result)
    assert any(r.is_error for r in results), "the flipper never got in the way"


@pytest.mark.anyio
async def test_edits_racing_a_flipped_parent_change_nothing_outside(
    client: Client, sandbox: Sandbox, workspace: Path, outside_tokens: Path
) -> None:
    flip_pair(workspace, outside_tokens)
    for i in range(RACING):
        (workspace / "flip" / f"t{i}.txt").write_text("token inside\n")
    calls = [
        ("edit", {"file_path": f"flip/t{i}.txt", "old_string": "token", "new_string": "edited"})
        for i in range(RACING)
    ]
    with flipping(workspace, "flip", "flip.swap"):
        results = await call_many(client, calls)
    for result in results:
        assert sandbox.secret not in text(result)
        assert not result.is_error or is_refusal(result), text(result)
    assert any(r.is_error for r in results), "the flipper never got in the way"


@pytest.mark.anyio
async def test_glob_and_grep_racing_a_flipped_directory_see_only_the_workspace(
    client: Client, sandbox: Sandbox, workspace: Path, outside: Path
) -> None:
    flip_pair(workspace, outside)
    (workspace / "flip" / "inside.txt").write_text("inside needle\n")
    calls: list[tuple[str, dict[str, Any]]] = []
    for i in range(RACING // 2):
        calls.append(("glob", {"pattern": "**", "path": "flip"} if i % 2 else {"pattern": "flip/**/*.txt"}))
        calls.append(
            ("grep", {"pattern": "needle|tether", "path": "flip"} if i % 2 else {"pattern": "tether"})
        )
    with flipping(workspace, "flip", "flip.swap"):
        results = await call_many(client, calls)
    for result in results:
        assert sandbox.secret not in text(result)
        assert "only-outside" not in text(result) and "secret.txt" not in text(result)
        assert not result.is_error or is_refusal(result), text(result)
    assert any("/workspace/flip/inside.txt" in text(r) for r in results)


# --------------------------------------------------------------------------- the files API


@pytest.fixture
def sdk(gateway: ServerProcess, api_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=30) as client:
        yield client


@pytest.fixture
def data_dir(gateway: ServerProcess) -> Iterator[Path]:
    """The gateway's data directory as the gateway sees it; its keys must never change."""
    directory = seen_by(gateway.process.pid, Path(gateway.data_dir))  # type: ignore[attr-defined]
    keys = (directory / "master.keys").read_bytes()
    assert (directory / "tether.db").is_file()
    yield directory
    assert (directory / "master.keys").read_bytes() == keys
    assert (directory / "tether.db").is_file()


HOST_NAMES = {"master.keys", "tether.db", "passwd", "hostname", "secret.txt", "only-outside.txt"}


def tool_agent(sdk: anthropic.Anthropic, marker: str) -> Any:
    return sdk.beta.agents.create(
        name="attacker", model="claude-sonnet-4-6", system=marker, tools=[{"type": "agent_toolset_20260401"}]
    )


def new_session(sdk: anthropic.Anthropic, scripts: Scripts, turns: list[dict[str, Any]] | None = None) -> Any:
    environment = sdk.beta.environments.create(name="escape-env")
    agent = tool_agent(sdk, scripts.add(turns or [{"content": [{"type": "text", "text": "ok"}]}]))
    return sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id)


def bash_turn(command: str) -> list[dict[str, Any]]:
    return [
        {"content": [{"type": "tool_use", "name": "bash", "input": {"command": command}}]},
        {"content": [{"type": "text", "text": "{{last_tool_result}}"}]},
    ]


def listed(sdk: anthropic.Anthropic, session_id: str) -> list[str]:
    return [f.filename for f in sdk.beta.files.list(scope_id=session_id)]


def session_workspace(data_dir: Path, session_id: str) -> Path:
    """Where the model's bash writes, seen from the host: staging here is what ``ln -s`` would do."""
    workspace = data_dir / "workspaces" / session_id
    workspace.mkdir(parents=True, exist_ok=True)
    return workspace


def test_outputs_swapped_for_links_out_by_the_model_list_nothing(
    sdk: anthropic.Anthropic, scripts: Scripts, data_dir: Path
) -> None:
    """The reproduced attack, through a real agent: its bash replaces ``outputs`` with links to the
    gateway's data directory (``../..`` from the workspace), ``/etc`` and ``/``."""
    commands = [
        "mkdir -p outputs && echo fine > outputs/ok.txt",
        "rm -rf outputs && ln -s ../.. outputs && ls outputs/ >/dev/null; echo linked",
        "rm outputs && ln -s /etc outputs && echo linked",
        "rm outputs && ln -s / outputs && echo linked",
        "rm outputs && mkdir outputs && ln -s ../.. outputs/up && ln -s /etc/passwd outputs/passwd "
        "&& ln -s ../../../tether.db outputs/db && echo linked",
    ]
    session = new_session(sdk, scripts, [turn for command in commands for turn in bash_turn(command)])
    send_and_stream(sdk, session.id, [user_message("go")])
    assert listed(sdk, session.id) == ["ok.txt"]
    for command in commands[1:]:
        streamed = send_and_stream(sdk, session.id, [user_message("next")])
        assert any(e.type == "agent.tool_result" and not e.is_error for e in streamed), command
        names = listed(sdk, session.id)
        assert names == [], (command, names)
        assert not HOST_NAMES & set(names)


@pytest.mark.parametrize("target", ["../..", "/etc", "/", "DATA_DIR"])
def test_outputs_linked_out_is_not_listed(
    sdk: anthropic.Anthropic, scripts: Scripts, gateway: ServerProcess, data_dir: Path, target: str
) -> None:
    session = new_session(sdk, scripts)
    workspace = session_workspace(data_dir, session.id)
    (workspace / "outputs").symlink_to(gateway.data_dir if target == "DATA_DIR" else target)  # type: ignore[attr-defined]
    assert listed(sdk, session.id) == []


def test_symlinked_entries_of_outputs_are_neither_listed_nor_followed(
    sdk: anthropic.Anthropic, scripts: Scripts, gateway: ServerProcess, data_dir: Path, outside: Path
) -> None:
    session = new_session(sdk, scripts)
    outputs = session_workspace(data_dir, session.id) / "outputs"
    (outputs / "real").mkdir(parents=True)
    (outputs / "real" / "ok.txt").write_text("ok")
    (outputs / "secret.txt").symlink_to(outside / "secret.txt")
    (outputs / "master.keys").symlink_to("../../../master.keys")
    (outputs / "data").symlink_to(gateway.data_dir)  # type: ignore[attr-defined]
    (outputs / "real" / "up").symlink_to("../..")
    (outputs / "etc").symlink_to("/etc")
    assert listed(sdk, session.id) == ["ok.txt"]
    [record] = sdk.beta.files.list(scope_id=session.id)
    assert sdk.beta.files.download(record.id).read() == b"ok"


@pytest.mark.parametrize("swap", ["outputs", "subdirectory", "file"])
def test_download_and_delete_after_a_swap_never_reach_the_host(
    sdk: anthropic.Anthropic, scripts: Scripts, data_dir: Path, outside: Path, swap: str
) -> None:
    """A file is listed, then ``outputs``, the directory holding the file, or the file itself is
    swapped for a link to the same name outside: download is "not found", delete removes nothing
    outside."""
    session = new_session(sdk, scripts)
    workspace = session_workspace(data_dir, session.id)
    (workspace / "outputs" / "sub").mkdir(parents=True)
    (workspace / "outputs" / "sub" / "report.txt").write_text("inside")
    [record] = sdk.beta.files.list(scope_id=session.id)
    (outside / "sub").mkdir()
    (outside / "sub" / "report.txt").write_text(f"{record.id} outside")
    if swap == "outputs":
        (workspace / "outputs").rename(workspace / "moved")
        (workspace / "outputs").symlink_to(outside)
    elif swap == "subdirectory":
        (workspace / "outputs" / "sub").rename(workspace / "moved")
        (workspace / "outputs" / "sub").symlink_to(outside / "sub")
    else:
        (workspace / "outputs" / "sub" / "report.txt").unlink()
        (workspace / "outputs" / "sub" / "report.txt").symlink_to(outside / "sub" / "report.txt")

    with pytest.raises(anthropic.NotFoundError):
        sdk.beta.files.download(record.id)
    sdk.beta.files.delete(record.id)
    assert (outside / "sub" / "report.txt").read_text() == f"{record.id} outside"
    shutil.rmtree(outside / "sub")


def test_files_api_racing_a_flipped_outputs_never_serves_or_removes_host_files(
    sdk: anthropic.Anthropic, scripts: Scripts, data_dir: Path, outside: Path
) -> None:
    session = new_session(sdk, scripts)
    workspace = session_workspace(data_dir, session.id)
    (workspace / "outputs").mkdir()
    (workspace / "outputs" / "report.txt").write_text("inside")
    (workspace / "outputs.swap").symlink_to(outside)
    real = os.open(workspace / "outputs", os.O_RDONLY | os.O_DIRECTORY)  # the directory, whatever its name
    served = missing = 0
    try:
        with flipping(workspace, "outputs", "outputs.swap"):
            for _ in range(40):
                names = [f.filename for f in sdk.beta.files.list(scope_id=session.id)]
                assert names in ([], ["report.txt"]), names
                for record in sdk.beta.files.list(scope_id=session.id):
                    try:
                        assert sdk.beta.files.download(record.id).read() == b"inside"
                        served += 1
                    except anthropic.NotFoundError:
                        missing += 1
                    sdk.beta.files.delete(record.id)
                    with os.fdopen(
                        os.open("report.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=real), "w"
                    ) as f:
                        f.write("inside")
    finally:
        os.close(real)
    assert served + missing > 0


# --------------------------------------------------------------------------- the quota's walker


def deep_tree(root: Path, depth: int = 40, name: str = "d" * 200) -> int:
    """A chain of directories deeper than ``PATH_MAX``, built through descriptors as ``cd`` would;
    a 1 MiB file at the bottom. Returns the length of the deepest path."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    leaf = os.open("big", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"x" * (1 << 20))
    os.close(leaf)
    os.close(fd)
    return len(str(root)) + depth * (len(name) + 1) + len("/big")


def reference_usage(root: Path) -> int:
    """What ``disk_usage`` must find, by the standard library's descriptor-based ``os.fwalk``."""
    total = 0
    for _dir, dirs, files, dir_fd in os.fwalk(root):
        for name in dirs + files:
            total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
    return total


def test_disk_usage_counts_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    assert deep_tree(tmp_path) > os.pathconf("/", "PC_PATH_MAX")
    assert disk_usage(tmp_path) == reference_usage(tmp_path) >= 1 << 20


def closed_tree(root: Path) -> None:
    """``hidden`` holds 1 MiB, but its mode is ``-wx``: unlistable for anyone but root."""
    (root / "hidden" / "inner").mkdir(parents=True)
    (root / "hidden" / "inner" / "big").write_bytes(b"x" * (1 << 20))
    (root / "hidden" / "inner").chmod(0o300)
    (root / "hidden").chmod(0o300)


def test_disk_usage_counts_a_directory_it_may_not_read(tmp_path: Path) -> None:
    closed_tree(tmp_path)
    assert disk_usage(tmp_path) >= 1 << 20
    if os.geteuid() != 0:  # the server granted itself u+rx on its own directory
        assert (tmp_path / "hidden").stat().st_mode & 0o700 == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_disk_usage_as_an_unprivileged_server_counts_a_closed_directory() -> None:
    """As root, drop to an unprivileged uid in a child (the server's situation outside CI's root
    run) and measure a closed tree that uid owns; only its own directories' modes change."""
    uid = 54_321
    root = Path(tempfile.mkdtemp(prefix="tether-du-"))
    try:
        closed_tree(root)
        os.close(os.open(root / "root-owned", os.O_CREAT | os.O_WRONLY, 0o600))
        for _dir, dirs, files, dir_fd in os.fwalk(root):
            for name in dirs + files:
                if name != "root-owned":
                    os.chown(name, uid, uid, dir_fd=dir_fd, follow_symlinks=False)
        os.chown(root, uid, uid)
        os.chmod(root, 0o700)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                os.close(read)
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.write(write, str(disk_usage(root)).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            measured = int(pipe.read() or "0")
        os.waitpid(pid, 0)
        assert measured >= 1 << 20
        assert (root / "hidden").stat().st_mode & 0o777 == 0o700
        assert (root / "root-owned").stat().st_mode & 0o777 == 0o600
    finally:
        shutil.rmtree(root)
