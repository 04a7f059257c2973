"""Unit tests of ``sandbox_server.beneath``: lookups the kernel keeps beneath a directory.

Every test runs twice, once with ``openat2`` and once with the component-by-component
fallback forced (``use_openat2(False)``), and asserts both what the call did and that
nothing outside the directory changed.
"""

from __future__ import annotations

import errno
import os
import platform
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_server import beneath
from tests.escape.support import flipping

SECRET = b"host secret\n"


@pytest.fixture(params=["openat2", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "openat2":
        beneath.use_openat2(None)
        if not beneath.openat2_available():
            pytest.skip("openat2 is not available here")
    else:
        beneath.use_openat2(False)

        def no_openat2(*args: object, **kwargs: object) -> int:
            raise AssertionError("the fallback must not call openat2")

        monkeypatch.setattr(beneath, "_openat2", no_openat2)
    yield request.param
    beneath.use_openat2(None)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_bytes(SECRET)
    return directory


@pytest.fixture
def root(tmp_path: Path, outside: Path) -> Path:
    """The directory lookups stay beneath; ``outside`` is its sibling."""
    directory = tmp_path / "root"
    directory.mkdir()
    return directory


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def assert_outside_unchanged(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == SECRET


def read_beneath(root_fd: int, relative: str, **kwargs: bool) -> bytes:
    fd = beneath.open_beneath(root_fd, relative, os.O_RDONLY, **kwargs)
    try:
        return os.read(fd, 1024)
    finally:
        os.close(fd)


def test_this_kernel_has_openat2() -> None:
    beneath.use_openat2(None)
    if int(platform.release().split(".")[0]) >= 6:
        assert beneath.openat2_available()


# --------------------------------------------------------------------------- open_beneath


def test_follows_symlinks_that_stay_beneath(mode: str, root: Path, root_fd: int) -> None:
    (root / "real").mkdir()
    (root / "real" / "f.txt").write_bytes(b"inside")
    (root / "alias").symlink_to("real")
    (root / "real" / "up").symlink_to("../real/f.txt")
    (root / "chain").symlink_to("alias/up")
    for relative in ("real/f.txt", "alias/f.txt", "real/up", "chain", "real/../alias/./f.txt", "./chain"):
        assert read_beneath(root_fd, relative) == b"inside", relative


@pytest.mark.parametrize(
    "relative",
    ["..", "../outside/secret.txt", "real/../../outside/secret.txt", "/etc/passwd", "abs/secret.txt", "rel"],
)
def test_refuses_every_way_out(mode: str, root: Path, root_fd: int, outside: Path, relative: str) -> None:
    (root / "real").mkdir()
    (root / "abs").symlink_to(outside)
    (root / "rel").symlink_to("../outside/secret.txt")
    with pytest.raises(OSError) as caught:
        beneath.open_beneath(root_fd, relative, os.O_RDONLY)
    assert caught.value.errno == errno.EXDEV
    assert_outside_unchanged(outside)


def test_a_link_to_proc_is_refused(mode: str, root: Path, root_fd: int) -> None:
    (root / "me").symlink_to("/proc/self/root/etc/passwd")
    (root / "fd").symlink_to(f"/proc/self/fd/{root_fd}")
    for relative in ("me", "fd", "fd/x"):
        with pytest.raises(OSError) as caught:
            beneath.open_beneath(root_fd, relative, os.O_RDONLY)
        assert caught.value.errno in (errno.EXDEV, errno.ELOOP), relative


def test_no_symlinks_and_no_follow(mode: str, root: Path, root_fd: int) -> None:
    (root / "real").mkdir()
    (root / "real" / "f.txt").write_bytes(b"inside")
    (root / "alias").symlink_to("real")
    (root / "link.txt").symlink_to("real/f.txt")
    for relative in ("alias/f.txt", "link.txt"):
        with pytest.raises(OSError) as caught:
            beneath.open_beneath(root_fd, relative, os.O_RDONLY, symlinks=False)
        assert caught.value.errno == errno.ELOOP
    assert read_beneath(root_fd, "real/f.txt", symlinks=False) == b"inside"
    with pytest.raises(OSError) as caught:
        beneath.open_beneath(root_fd, "link.txt", os.O_RDONLY | os.O_NOFOLLOW)
    assert caught.value.errno == errno.ELOOP
    assert read_beneath(root_fd, "alias/f.txt") == b"inside"  # O_NOFOLLOW refuses only the last
    fd = beneath.open_beneath(root_fd, "link.txt", os.O_PATH | os.O_NOFOLLOW)
    try:
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    assert stat.S_ISREG(beneath.stat_beneath(root_fd, "link.txt").st_mode)
    assert stat.S_ISLNK(beneath.stat_beneath(root_fd, "link.txt", follow_symlinks=False).st_mode)


def test_symlink_loops_end(mode: str, root: Path, root_fd: int) -> None:
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    with pytest.raises(OSError) as caught:
        beneath.open_beneath(root_fd, "a", os.O_RDONLY)
    assert caught.value.errno == errno.ELOOP


def test_create_through_links(mode: str, root: Path, root_fd: int, outside: Path) -> None:
    (root / "dangling").symlink_to("made.txt")
    (root / "away").symlink_to(outside / "new.txt")
    (root / "away-dir").symlink_to(outside)
    os.close(beneath.open_beneath(root_fd, "dangling", os.O_WRONLY | os.O_CREAT, 0o644))
    assert (root / "made.txt").is_file()
    for relative, code in (("away", errno.EXDEV), ("away-dir/new.txt", errno.EXDEV)):
        with pytest.raises(OSError) as caught:
            beneath.open_beneath(root_fd, relative, os.O_WRONLY | os.O_CREAT, 0o644)
        assert caught.value.errno == code
    with pytest.raises(FileExistsError):
        beneath.open_beneath(root_fd, "away", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert_outside_unchanged(outside)


# --------------------------------------------------------------------------- makedirs, unlink


def test_makedirs_creates_beneath_only(mode: str, root: Path, root_fd: int, outside: Path) -> None:
    fd = beneath.makedirs_beneath(root_fd, "a/b/c")
    os.close(fd)
    assert (root / "a/b/c").is_dir()
    (root / "alias").symlink_to("a")
    os.close(beneath.makedirs_beneath(root_fd, "alias/x/y"))
    assert (root / "a/x/y").is_dir()
    (root / "out").symlink_to(outside)
    for relative in ("out/new", "a/../../outside/new", "missing/../../outside/new", "../outside/new"):
        with pytest.raises(OSError) as caught:
            beneath.makedirs_beneath(root_fd, relative)
        assert caught.value.errno == errno.EXDEV, relative
    (root / "file").write_bytes(b"")
    with pytest.raises((FileExistsError, NotADirectoryError)):
        beneath.makedirs_beneath(root_fd, "file/sub")
    assert_outside_unchanged(outside)
    assert not (root.parent / "new").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_makedirs_gives_new_directories_to_the_owner(mode: str, root: Path, root_fd: int) -> None:
    (root / "old").mkdir()
    os.close(beneath.makedirs_beneath(root_fd, "old/new/deeper", owner=(54321, 54322)))
    assert (root / "old").stat().st_uid == 0, "an existing directory is not taken over"
    for relative in ("old/new", "old/new/deeper"):
        info = (root / relative).stat()
        assert (info.st_uid, info.st_gid) == (54321, 54322)


def test_unlink_beneath(mode: str, root: Path, root_fd: int, outside: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_bytes(b"x")
    (root / "d" / "link").symlink_to(outside / "secret.txt")
    (root / "out").symlink_to(outside)
    (root / "alias").symlink_to("d")
    beneath.unlink_beneath(root_fd, "d/f.txt")
    assert not (root / "d" / "f.txt").exists()
    beneath.unlink_beneath(root_fd, "d/link")  # the link itself, never its target
    assert not (root / "d" / "link").is_symlink()
    with pytest.raises(OSError) as caught:
        beneath.unlink_beneath(root_fd, "out/secret.txt")
    assert caught.value.errno == errno.EXDEV
    (root / "d" / "g.txt").write_bytes(b"x")
    with pytest.raises(OSError) as caught:
        beneath.unlink_beneath(root_fd, "alias/g.txt", symlinks=False)
    assert caught.value.errno == errno.ELOOP
    assert (root / "d" / "g.txt").exists()
    assert_outside_unchanged(outside)


# --------------------------------------------------------------------------- races


def test_a_parent_flipping_to_a_symlink_never_leads_out(
    mode: str, root: Path, root_fd: int, outside: Path
) -> None:
    """A thread swaps ``p`` between a directory and a symlink out while we create files in it."""
    (root / "p").mkdir()
    (root / "p.swap").symlink_to(outside)
    created = refused = i = 0
    with flipping(root, "p", "p.swap"):
        # At least 400 attempts, and on until both states were met (the flipper's pace depends on load).
        while i < 400 or (min(created, refused) < 5 and i < 5000):
            i += 1
            try:
                if i % 2:
                    os.close(beneath.makedirs_beneath(root_fd, f"p/d{i}/e"))
                os.close(beneath.open_beneath(root_fd, f"p/f{i}.txt", os.O_WRONLY | os.O_CREAT, 0o644))
                created += 1
            except OSError as exc:
                assert exc.errno in (errno.EXDEV, errno.ENOENT, errno.ENOTDIR, errno.EEXIST), exc
                refused += 1
    assert_outside_unchanged(outside)
    assert created > 0 and refused > 0, (created, refused)


# --------------------------------------------------------------------------- walking


def build_tree(root: Path, outside: Path) -> None:
    (root / "b").mkdir()
    (root / "b" / "c.txt").write_bytes(b"cc")
    (root / "a.txt").write_bytes(b"a")
    (root / "b" / "d").mkdir()
    (root / "b" / "d" / "e.txt").write_bytes(b"e")
    (root / "z.txt").write_bytes(b"z")
    (root / "out").symlink_to(outside)
    (root / "b" / "alias").symlink_to("d")


def test_walk_is_depth_first_by_name_and_never_follows_links(
    mode: str, root: Path, root_fd: int, outside: Path
) -> None:
    build_tree(root, outside)
    paths = [entry.path for entry in beneath.walk(root_fd)]
    assert paths == ["a.txt", "b", "b/alias", "b/c.txt", "b/d", "b/d/e.txt", "out", "z.txt"]
    kinds = {entry.path: stat.S_IFMT(entry.stat.st_mode) for entry in beneath.walk(root_fd)}
    assert kinds["out"] == stat.S_IFLNK
    skipped = [e.path for e in beneath.walk(root_fd, lambda e: e.name != "d")]
    assert "b/d/e.txt" not in skipped and "b/d" in skipped
    stats = list(beneath.walk_stats(root_fd))
    assert sorted(s.st_ino for s in stats) == sorted(e.stat.st_ino for e in beneath.walk(root_fd))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_walk_goes_deeper_than_path_max_with_one_directory_open(mode: str, root: Path, root_fd: int) -> None:
    name = "d" * 200
    depth = 40  # 8 KiB of path, twice PATH_MAX
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(leaf, b"deep")
    os.close(leaf)
    os.close(fd)
    before = open_fds()
    most = 0
    paths = []
    for entry in beneath.walk(root_fd):
        most = max(most, open_fds() - before)
        paths.append(entry.path)
    assert paths[-1].endswith("/leaf.txt")
    assert len(paths[-1]) > os.pathconf("/", "PC_PATH_MAX")
    assert len(paths) == depth + 1
    assert most <= 2
    assert len(list(beneath.walk_stats(root_fd))) == depth + 1
    assert open_fds() == before


@pytest.mark.parametrize("swap_in_a_link", [False, True])
def test_walk_survives_the_tree_changing_under_it(
    mode: str, root: Path, root_fd: int, outside: Path, swap_in_a_link: bool
) -> None:
    """A directory moved away while the walk is inside it (so ``..`` leads elsewhere), and the way
    back down swapped for a link out: the walk carries on where it can and never leaves."""
    for top in ("a", "b"):
        (root / top / "x" / "inner").mkdir(parents=True)
        (root / top / "x" / "inner" / "f.txt").write_bytes(b"x")
        (root / top / "x" / "z.txt").write_bytes(b"z")
    (root / "c.txt").write_bytes(b"c")
    seen = []
    for entry in beneath.walk(root_fd):
        seen.append(entry.path)
        if entry.path == "a/x/inner/f.txt":
            os.rename(root / "a" / "x" / "inner", root / "b" / "stolen")
            if swap_in_a_link:
                os.rename(root / "a", root / "moved")
                (root / "a").symlink_to(outside)
    assert not any("secret" in path for path in seen)
    # a/x is reached again by name (its last entry still listed) unless a link is in the way.
    assert ("a/x/z.txt" in seen) is not swap_in_a_link
    assert "b/stolen/f.txt" in seen
    assert seen[-1] == "c.txt"
    assert_outside_unchanged(outside)


# --------------------------------------------------------------------------- the tools' owner


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_the_tools_give_what_they_create_to_the_workspace_owner(mode: str, root: Path) -> None:
    """A root server's tools hand every file and directory they create to the sandbox's uid."""
    from sandbox_server import file_tools
    from sandbox_server.workspace import Workspace

    owner = (54321, 54322)
    ws = Workspace.open(root, owner=owner)
    (root / "theirs.txt").write_text("old")
    os.chown(root / "theirs.txt", 777, 777)
    file_tools.write(ws, "a/b/new.txt", "x")
    file_tools.write(ws, "theirs.txt", "new")
    for relative in ("a", "a/b", "a/b/new.txt"):
        info = (root / relative).stat()
        assert (info.st_uid, info.st_gid) == owner, relative
    assert (root / "theirs.txt").stat().st_uid == 777, "a file someone else owns is not taken over"
    assert (root / "theirs.txt").read_text() == "new"
