"""Unit tests for the sandbox's path containment and file tools (no MCP involved)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox_server import file_tools
from sandbox_server.file_tools import MAX_GLOB_RESULTS, MAX_OUTPUT_BYTES, ToolError
from sandbox_server.workspace import WORKSPACE_MOUNT, Workspace, WorkspaceError


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace holding a secret the model must never see."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("TOP SECRET needle\n")
    return directory


# --------------------------------------------------------------------------- containment


def test_open_creates_the_root_and_resolves_it(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    ws = Workspace.open(tmp_path / "link" / "new")
    assert ws.root == (tmp_path / "real" / "new").resolve()
    assert ws.root.is_dir()


@pytest.mark.parametrize(
    ("given", "relative"),
    [
        ("a.txt", "a.txt"),
        ("./dir/a.txt", "dir/a.txt"),
        ("dir/../a.txt", "a.txt"),
        ("/workspace/dir/a.txt", "dir/a.txt"),
        ("/workspace/dir/../a.txt", "a.txt"),
        ("/workspace", ""),
        ("/workspace/", ""),
        (".", ""),
    ],
)
def test_resolve_maps_inside_paths_onto_the_root(ws: Workspace, given: str, relative: str) -> None:
    assert ws.resolve(given) == (ws.root / relative if relative else ws.root)


@pytest.mark.parametrize(
    "given",
    [
        "/etc/passwd",
        "../x",
        "a/../../x",
        "..",
        "/workspace/../etc/passwd",
        "/workspacefoo/a",
        "//workspace/a",
        "/",
        "",
        "a\x00b",
    ],
)
def test_resolve_refuses_paths_outside(ws: Workspace, given: str) -> None:
    with pytest.raises(WorkspaceError):
        ws.resolve(given)


def test_resolve_refuses_the_host_path_of_the_workspace(ws: Workspace) -> None:
    """The host location is not a spelling the model may use (it should never learn it)."""
    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ws.resolve(str(ws.root / "a.txt"))


def test_resolve_refuses_symlinks_leading_out(ws: Workspace, outside: Path) -> None:
    (ws.root / "passwd").symlink_to("/etc/passwd")
    (ws.root / "out").symlink_to(outside)
    (ws.root / "dangling").symlink_to(outside / "missing.txt")
    for given in ("passwd", "/workspace/passwd", "out/secret.txt", "out", "dangling"):
        with pytest.raises(WorkspaceError, match="outside the workspace"):
            ws.resolve(given)


def test_resolve_follows_symlinks_that_stay_inside(ws: Workspace) -> None:
    (ws.root / "real").mkdir()
    (ws.root / "alias").symlink_to(ws.root / "real")
    assert ws.resolve("alias/f.txt") == ws.root / "real" / "f.txt"


def test_model_path_uses_the_mount(ws: Workspace) -> None:
    assert ws.model_path(ws.root) == WORKSPACE_MOUNT
    assert ws.model_path(ws.root / "a" / "b.txt") == "/workspace/a/b.txt"


def test_open_path_refuses_what_leads_out(ws: Workspace, outside: Path) -> None:
    """Lookups are resolved beneath the root by the kernel (``beneath``), not checked afterwards."""
    (ws.root / "out").symlink_to(outside)
    (ws.root / "up").symlink_to("..")
    for relative in ("out/secret.txt", "up/outside/secret.txt", "../outside/secret.txt"):
        with pytest.raises(WorkspaceError, match="outside the workspace"):
            ws.open_path(relative, os.O_RDONLY, shown=relative)


# --------------------------------------------------------------------------- read


def test_read_numbers_lines_like_cat_n(ws: Workspace) -> None:
    (ws.root / "f.txt").write_text("alpha\nbeta\n")
    assert file_tools.read(ws, "f.txt") == "     1\talpha\n     2\tbeta\n"


def test_read_view_range(ws: Workspace) -> None:
    (ws.root / "f.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    assert file_tools.read(ws, "/workspace/f.txt", [3, 4]) == "     3\tline 3\n     4\tline 4\n"
    assert file_tools.read(ws, "f.txt", [9, 0]) == "     9\tline 9\n    10\tline 10\n"
    assert file_tools.read(ws, "f.txt", [10, -1]) == "    10\tline 10\n"
    assert file_tools.read(ws, "f.txt", [9, 99]) == "     9\tline 9\n    10\tline 10\n"


@pytest.mark.parametrize(
    ("view_range", "message"),
    [
        ([0, 2], "1 or more"),
        ([5, 2], "before start_line"),
        ([1], r"\[start_line, end_line\]"),
        ([20, 0], "only 10"),
    ],
)
def test_read_rejects_bad_view_range(ws: Workspace, view_range: list[int], message: str) -> None:
    (ws.root / "f.txt").write_text("x\n" * 10)
    with pytest.raises(ToolError, match=message):
        file_tools.read(ws, "f.txt", view_range)


def test_read_errors_for_missing_files_and_directories(ws: Workspace) -> None:
    (ws.root / "d").mkdir()
    with pytest.raises(ToolError, match=r"does not exist: nope\.txt"):
        file_tools.read(ws, "nope.txt")
    with pytest.raises(ToolError, match="is a directory"):
        file_tools.read(ws, "d")


def test_read_empty_and_binary_files(ws: Workspace) -> None:
    (ws.root / "empty").write_text("")
    (ws.root / "bin").write_bytes(b"\x7fELF\x00\x00")
    assert "empty" in file_tools.read(ws, "empty")
    with pytest.raises(ToolError, match="binary"):
        file_tools.read(ws, "bin")


def test_read_refuses_symlink_to_etc_passwd(ws: Workspace) -> None:
    (ws.root / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ToolError, match="outside the workspace"):
        file_tools.read(ws, "passwd")
    with pytest.raises(ToolError, match="outside the workspace"):
        file_tools.read(ws, "/etc/passwd")
    with pytest.raises(ToolError, match="outside the workspace"):
        file_tools.read(ws, "../outside/secret.txt")


def test_read_refuses_a_fifo_without_hanging(ws: Workspace) -> None:
    os.mkfifo(ws.root / "pipe")
    with pytest.raises(ToolError, match="not a regular file"):
        file_tools.read(ws, "pipe")


def test_read_caps_output_and_says_where_to_continue(ws: Workspace) -> None:
    line = "x" * 99
    (ws.root / "big.txt").write_text(f"{line}\n" * 10_000)
    out = file_tools.read(ws, "big.txt")
    assert len(out.encode()) <= MAX_OUTPUT_BYTES + 200
    assert "output truncated" in out
    shown = out.count(line)
    assert f"view_range=[{shown + 1}, 0]" in out
    assert file_tools.read(ws, "big.txt", [shown + 1, shown + 1]) == f"{shown + 1:>6}\t{line}\n"


def test_read_caps_a_single_huge_line_and_keeps_numbering(ws: Workspace) -> None:
    (ws.root / "huge.txt").write_text("y" * (3 * MAX_OUTPUT_BYTES) + "\nsecond\n")
    out = file_tools.read(ws, "huge.txt")
    assert len(out.encode()) <= MAX_OUTPUT_BYTES + 200
    assert "view_range=[2, 0]" in out
    assert file_tools.read(ws, "huge.txt", [2, 0]) == "     2\tsecond\n"


# --------------------------------------------------------------------------- write


def test_write_creates_parents_and_overwrites(ws: Workspace) -> None:
    assert file_tools.write(ws, "a/b/c.txt", "héllo\n") == "Created /workspace/a/b/c.txt (7 bytes)"
    assert (ws.root / "a/b/c.txt").read_text() == "héllo\n"
    assert file_tools.write(ws, "/workspace/a/b/c.txt", "x") == "Overwrote /workspace/a/b/c.txt (1 bytes)"
    assert (ws.root / "a/b/c.txt").read_text() == "x"


def test_write_refuses_escapes(ws: Workspace, outside: Path) -> None:
    (ws.root / "out").symlink_to(outside)
    (ws.root / "secret").symlink_to(outside / "secret.txt")
    for given in ("../outside/new.txt", "/tmp/new.txt", "out/new.txt", "secret", "/workspace/../x"):
        with pytest.raises(ToolError, match="outside the workspace"):
            file_tools.write(ws, given, "pwned")
    assert (outside / "secret.txt").read_text() == "TOP SECRET needle\n"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_write_through_an_inside_symlink_writes_the_target(ws: Workspace) -> None:
    (ws.root / "target.txt").write_text("old")
    (ws.root / "link.txt").symlink_to("target.txt")
    file_tools.write(ws, "link.txt", "new")
    assert (ws.root / "target.txt").read_text() == "new"
    assert (ws.root / "link.txt").is_symlink()


def test_write_errors_for_directories_and_file_parents(ws: Workspace) -> None:
    (ws.root / "d").mkdir()
    (ws.root / "f").write_text("")
    with pytest.raises(ToolError, match="is a directory"):
        file_tools.write(ws, "d", "x")
    with pytest.raises(ToolError, match="not a directory"):
        file_tools.write(ws, "f/child.txt", "x")


# --------------------------------------------------------------------------- edit


def test_edit_replaces_a_unique_match(ws: Workspace) -> None:
    (ws.root / "f.py").write_text("a = 1\nb = 2\n")
    assert file_tools.edit(ws, "f.py", "b = 2", "b = 3") == "Replaced 1 occurrence in /workspace/f.py"
    assert (ws.root / "f.py").read_text() == "a = 1\nb = 3\n"


def test_edit_zero_matches(ws: Workspace) -> None:
    (ws.root / "f.py").write_text("a = 1\n")
    with pytest.raises(ToolError, match="not found"):
        file_tools.edit(ws, "f.py", "zzz", "y")


def test_edit_multiple_matches_need_replace_all(ws: Workspace) -> None:
    (ws.root / "f.py").write_text("x x x\n")
    with pytest.raises(ToolError, match=r"occurs 3 times.*replace_all"):
        file_tools.edit(ws, "f.py", "x", "y")
    with pytest.raises(ToolError, match="occurs 3 times"):
        file_tools.edit(ws, "f.py", "x", "y", replace_all=False)
    assert (ws.root / "f.py").read_text() == "x x x\n"
    assert (
        file_tools.edit(ws, "f.py", "x", "y", replace_all=True) == "Replaced 3 occurrences in /workspace/f.py"
    )
    assert (ws.root / "f.py").read_text() == "y y y\n"


def test_edit_rejects_empty_and_identical_strings(ws: Workspace) -> None:
    (ws.root / "f").write_text("abc")
    with pytest.raises(ToolError, match="empty"):
        file_tools.edit(ws, "f", "", "x")
    with pytest.raises(ToolError, match="identical"):
        file_tools.edit(ws, "f", "a", "a")


def test_edit_missing_non_utf8_and_escaping_files(ws: Workspace, outside: Path) -> None:
    (ws.root / "latin1").write_bytes("caf\xe9".encode("latin-1"))
    (ws.root / "secret").symlink_to(outside / "secret.txt")
    with pytest.raises(ToolError, match="does not exist"):
        file_tools.edit(ws, "missing", "a", "b")
    with pytest.raises(ToolError, match="not UTF-8"):
        file_tools.edit(ws, "latin1", "caf", "tea")
    with pytest.raises(ToolError, match="outside the workspace"):
        file_tools.edit(ws, "secret", "TOP", "NOT")
    assert (outside / "secret.txt").read_text() == "TOP SECRET needle\n"


# --------------------------------------------------------------------------- glob


def _touch(ws: Workspace, relative: str, mtime: float, text: str = "") -> None:
    path = ws.root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))


def test_glob_doublestar_newest_first(ws: Workspace) -> None:
    _touch(ws, "a.py", 1000)
    _touch(ws, "src/b.py", 3000)
    _touch(ws, "src/deep/c.py", 2000)
    _touch(ws, "src/deep/d.txt", 4000)
    assert file_tools.glob(ws, "**/*.py").splitlines() == [
        "/workspace/src/b.py",
        "/workspace/src/deep/c.py",
        "/workspace/a.py",
    ]
    assert file_tools.glob(ws, "*.py") == "/workspace/a.py"
    assert file_tools.glob(ws, "src/**").splitlines() == [
        "/workspace/src/deep/d.txt",
        "/workspace/src/b.py",
        "/workspace/src/deep/c.py",
    ]
    assert file_tools.glob(ws, "src/*/?.{py,txt}").splitlines() == [
        "/workspace/src/deep/d.txt",
        "/workspace/src/deep/c.py",
    ]
    assert file_tools.glob(ws, "[ab].py") == "/workspace/a.py"
    assert file_tools.glob(ws, "[!a].py").startswith("No files matched")


def test_glob_under_path_and_absolute_patterns(ws: Workspace) -> None:
    _touch(ws, "a.py", 1000)
    _touch(ws, "src/b.py", 2000)
    assert file_tools.glob(ws, "*.py", path="src") == "/workspace/src/b.py"
    assert file_tools.glob(ws, "*.py", path="/workspace/src") == "/workspace/src/b.py"
    assert file_tools.glob(ws, "/workspace/src/*.py") == "/workspace/src/b.py"
    assert file_tools.glob(ws, "nothing/**").startswith("No files matched")


@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("/etc/*", None),
        ("../**", None),
        ("src/../../*", None),
        ("*", "/etc"),
        ("*", "../outside"),
        ("*", ".."),
    ],
)
def test_glob_refuses_escapes(ws: Workspace, outside: Path, pattern: str, path: str | None) -> None:
    with pytest.raises(ToolError):
        file_tools.glob(ws, pattern, path)


def test_glob_never_follows_or_reports_links_out(ws: Workspace, outside: Path) -> None:
    _touch(ws, "own.txt", 1000)
    (ws.root / "out").symlink_to(outside)
    (ws.root / "secret-link.txt").symlink_to(outside / "secret.txt")
    (ws.root / "passwd").symlink_to("/etc/passwd")
    assert file_tools.glob(ws, "**") == "/workspace/own.txt"
    assert file_tools.glob(ws, "**/*.txt") == "/workspace/own.txt"
    with pytest.raises(ToolError, match="outside the workspace"):
        file_tools.glob(ws, "*", path="out")
    with pytest.raises(ToolError, match="outside the workspace"):
        file_tools.glob(ws, "out/*")


def test_glob_reports_inside_file_links(ws: Workspace) -> None:
    _touch(ws, "real.txt", 2000)
    (ws.root / "alias.txt").symlink_to("real.txt")
    assert sorted(file_tools.glob(ws, "*.txt").splitlines()) == [
        "/workspace/alias.txt",
        "/workspace/real.txt",
    ]


def test_glob_caps_results(ws: Workspace) -> None:
    for i in range(MAX_GLOB_RESULTS + 5):
        (ws.root / f"f{i:05}.txt").write_text("")
    lines = file_tools.glob(ws, "*.txt").splitlines()
    assert len(lines) == MAX_GLOB_RESULTS + 1
    assert f"of {MAX_GLOB_RESULTS + 5} matches" in lines[-1]


# --------------------------------------------------------------------------- grep


def test_grep_reports_path_line_and_text(ws: Workspace) -> None:
    (ws.root / "a.txt").write_text("one\nneedle here\nthree\n")
    (ws.root / "sub").mkdir()
    (ws.root / "sub/b.txt").write_text("NEEDLE\n")
    assert file_tools.grep(ws, "needle") == "/workspace/a.txt:2:needle here\n"
    assert file_tools.grep(ws, "(?i)needle").splitlines() == [
        "/workspace/a.txt:2:needle here",
        "/workspace/sub/b.txt:1:NEEDLE",
    ]
    assert file_tools.grep(ws, "NEEDLE", path="sub") == "/workspace/sub/b.txt:1:NEEDLE\n"
    assert file_tools.grep(ws, "e$", path="/workspace/a.txt").splitlines() == [
        "/workspace/a.txt:1:one",
        "/workspace/a.txt:2:needle here",
        "/workspace/a.txt:3:three",
    ]
    assert file_tools.grep(ws, "absent").startswith("No matches")


def test_grep_skips_binary_files_and_git(ws: Workspace) -> None:
    (ws.root / "bin").write_bytes(b"needle\x00\x01")
    (ws.root / ".git").mkdir()
    (ws.root / ".git/config").write_text("needle\n")
    assert file_tools.grep(ws, "needle").startswith("No matches")


def test_grep_invalid_regex_and_missing_path(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="Invalid regular expression"):
        file_tools.grep(ws, "(unclosed")
    with pytest.raises(ToolError, match="does not exist"):
        file_tools.grep(ws, "x", path="nowhere")


def test_grep_never_follows_or_reports_links_out(ws: Workspace, outside: Path) -> None:
    (ws.root / "out").symlink_to(outside)
    (ws.root / "secret-link.txt").symlink_to(outside / "secret.txt")
    (ws.root / "passwd").symlink_to("/etc/passwd")
    assert file_tools.grep(ws, "needle|root").startswith("No matches")
    for path in ("out", "secret-link.txt", "passwd", "/etc", "../outside"):
        with pytest.raises(ToolError, match="outside the workspace"):
            file_tools.grep(ws, "needle", path=path)


def test_grep_caps_output_and_long_lines(ws: Workspace) -> None:
    (ws.root / "long.txt").write_text("match" + "z" * 5000 + "\n")
    assert file_tools.grep(ws, "match").endswith(" [line truncated]\n")
    (ws.root / "many.txt").write_text("match this line please\n" * 50_000)
    out = file_tools.grep(ws, "match", path="many.txt")
    assert len(out.encode()) <= MAX_OUTPUT_BYTES + 200
    assert out.endswith("narrow the pattern or path]\n")
