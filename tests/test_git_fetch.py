"""Cloning a session's GitHub repository: the right tree, the token kept to its header, clear failures.

Every clone goes over real HTTP to a dulwich smart-HTTP server on loopback (``support.git_server``).
"""

from __future__ import annotations

import base64
import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from dulwich import porcelain
from dulwich.repo import Repo

from gateway.tools.git_fetch import (
    CheckoutFailed,
    RepositoryUrl,
    clone,
    parse_repository_url,
    source_url,
)
from tests.support.git_server import BareRepo, Executable, GitServer, Symlink, basic_auth, serve_git

TOKEN = "ghs_s3cr3tInstallationT0ken"
TOKEN_FORMS = [TOKEN, base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    with serve_git(tmp_path / "served") as running:
        yield running


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An empty folder to clone into; a test's clone goes to ``out / <name>``."""
    folder = tmp_path / "clones"
    folder.mkdir()
    return folder


def widgets(server: GitServer, *, token: str | None = None) -> tuple[BareRepo, dict[str, str]]:
    """acme/widgets: default branch ``trunk``, and a ``feature`` branch off its first commit."""
    repo = server.create_repo("acme", "widgets", token=token, default_branch="trunk")
    first = repo.commit("trunk", {"README.md": b"v1\n"})
    second = repo.commit("trunk", {"README.md": b"v2\n"})
    middle = repo.commit("feature", {"README.md": b"v1\n", "feature.txt": b"draft\n"}, parent=first)
    tip = repo.commit("feature", {"README.md": b"v1\n", "feature.txt": b"done\n"})
    return repo, {"first": first, "trunk": second, "feature-middle": middle, "feature": tip}


def acme_widgets() -> RepositoryUrl:
    return parse_repository_url("https://github.com/acme/widgets")


def head_of(clone_path: Path) -> bytes:
    return (clone_path / ".git" / "HEAD").read_bytes().strip()


def test_clones_the_default_branch(server: GitServer, out: Path) -> None:
    _, commits = widgets(server)
    sha = clone(acme_widgets(), out / "w", base_url=server.base_url, token=None, checkout=None)
    assert sha == commits["trunk"]
    assert (out / "w" / "README.md").read_bytes() == b"v2\n"
    assert not (out / "w" / "feature.txt").exists()
    assert head_of(out / "w") == b"ref: refs/heads/trunk"
    status = porcelain.status(str(out / "w"))
    assert (status.staged, status.unstaged, status.untracked) == (
        {"add": [], "delete": [], "modify": []},
        [],
        [],
    )


def test_clones_a_named_branch(server: GitServer, out: Path) -> None:
    _, commits = widgets(server)
    checkout = {"type": "branch", "name": "feature"}
    sha = clone(acme_widgets(), out / "w", base_url=server.base_url, token=None, checkout=checkout)
    assert sha == commits["feature"]
    assert (out / "w" / "feature.txt").read_bytes() == b"done\n"
    assert head_of(out / "w") == b"ref: refs/heads/feature"
    with Repo(str(out / "w")) as cloned:
        assert [entry.commit.id.decode() for entry in cloned.get_walker()] == [
            commits["feature"],
            commits["feature-middle"],
            commits["first"],
        ]


def test_checks_out_a_commit_that_is_no_branch_tip(server: GitServer, out: Path) -> None:
    _, commits = widgets(server)
    checkout = {"type": "commit", "sha": commits["feature-middle"].upper()}
    sha = clone(acme_widgets(), out / "w", base_url=server.base_url, token=None, checkout=checkout)
    assert sha == commits["feature-middle"]
    assert (out / "w" / "feature.txt").read_bytes() == b"draft\n"
    assert head_of(out / "w") == commits["feature-middle"].encode()  # detached, as git does


def test_working_tree_keeps_content_and_modes(server: GitServer, out: Path) -> None:
    repo = server.create_repo("acme", "tools")
    repo.commit(
        "main",
        {
            "README.md": b"plain\n",
            "bin/run": Executable(b"#!/bin/sh\necho run\n"),
            "docs/latest": Symlink("../README.md"),
            "deep/er/data.bin": bytes(range(256)),
        },
    )
    url = parse_repository_url("https://github.com/acme/tools")
    clone(url, out / "t", base_url=server.base_url, token=None, checkout=None)
    tree = out / "t"
    assert stat.S_IMODE(os.stat(tree).st_mode) == 0o755
    assert (tree / "README.md").read_bytes() == b"plain\n"
    assert not os.stat(tree / "README.md").st_mode & stat.S_IXUSR
    assert (tree / "bin" / "run").read_bytes() == b"#!/bin/sh\necho run\n"
    assert os.stat(tree / "bin" / "run").st_mode & stat.S_IXUSR
    assert (tree / "docs" / "latest").is_symlink()
    assert os.readlink(tree / "docs" / "latest") == "../README.md"
    assert (tree / "deep" / "er" / "data.bin").read_bytes() == bytes(range(256))


def test_private_repository_with_the_right_token(server: GitServer, out: Path) -> None:
    _, commits = widgets(server, token=TOKEN)
    sha = clone(acme_widgets(), out / "w", base_url=server.base_url, token=TOKEN, checkout=None)
    assert sha == commits["trunk"]
    assert server.requests, "the clone went to the loopback server"
    for request in server.requests:  # the token only ever travels as the Basic credential
        assert request.headers.get("HTTP_AUTHORIZATION") == basic_auth(TOKEN)
        elsewhere = [request.path, request.query, request.body.decode("latin-1")]
        elsewhere += [value for name, value in request.headers.items() if name != "HTTP_AUTHORIZATION"]
        assert not any(form in text for form in TOKEN_FORMS for text in elsewhere)


def test_a_redirect_elsewhere_does_not_carry_the_token(server: GitServer, out: Path, tmp_path: Path) -> None:
    with serve_git(tmp_path / "mirror") as mirror:
        _, commits = widgets(mirror)
        widgets(server, token=TOKEN)
        server.redirect("acme", "widgets", mirror.base_url)
        sha = clone(acme_widgets(), out / "w", base_url=server.base_url, token=TOKEN, checkout=None)
        assert sha == commits["trunk"]
        assert mirror.requests, "the clone followed the redirect"
        assert all("HTTP_AUTHORIZATION" not in request.headers for request in mirror.requests)
        assert [r.headers.get("HTTP_AUTHORIZATION") for r in server.requests] == [basic_auth(TOKEN)]


def test_clone_holds_no_token_and_names_the_public_url(server: GitServer, out: Path) -> None:
    widgets(server, token=TOKEN)
    clone(acme_widgets(), out / "w", base_url=server.base_url, token=TOKEN, checkout=None)
    with Repo(str(out / "w")) as cloned:
        assert (
            cloned.get_config().get((b"remote", b"origin"), b"url") == b"https://github.com/acme/widgets.git"
        )
    for folder, _, files in os.walk(out / "w"):
        for name in files:
            data = (Path(folder) / name).read_bytes()
            assert not any(form.encode() in data for form in TOKEN_FORMS), Path(folder) / name


def test_token_reaches_no_log_line(server: GitServer, out: Path, caplog: pytest.LogCaptureFixture) -> None:
    widgets(server, token=TOKEN)
    with caplog.at_level(logging.DEBUG):
        clone(acme_widgets(), out / "w", base_url=server.base_url, token=TOKEN, checkout=None)
    assert caplog.records, "urllib3 and dulwich log at debug level, so this checks something"
    assert not any(form in caplog.text for form in TOKEN_FORMS)


def assert_fails(kind: str, words: str, server: GitServer, out: Path, **kwargs: object) -> CheckoutFailed:
    """Clone with ``kwargs``; it must fail as ``kind`` saying ``words``, with no token and nothing left."""
    args: dict[str, object] = {"token": None, "checkout": None, **kwargs}
    with pytest.raises(CheckoutFailed) as failure:
        clone(acme_widgets(), out / "w", base_url=server.base_url, **args)  # type: ignore[arg-type]
    assert failure.value.error_type == f"repository_{kind}_error"
    assert words in str(failure.value)
    assert not any(form in repr(failure.value) for form in TOKEN_FORMS)
    assert failure.value.__cause__ is None and failure.value.__suppress_context__
    assert os.listdir(out) == [], "a failed clone leaves nothing behind"
    return failure.value


def test_a_wrong_token_is_refused(server: GitServer, out: Path) -> None:
    widgets(server, token="ghs_theRightOne")
    assert_fails("authentication", "authorization_token was refused", server, out, token=TOKEN)


def test_a_missing_token_is_refused(server: GitServer, out: Path) -> None:
    widgets(server, token=TOKEN)
    assert_fails("authentication", "no token given", server, out)


def test_a_missing_repository_is_not_found(server: GitServer, out: Path) -> None:
    assert_fails("not_found", "repository acme/widgets not found", server, out, token=TOKEN)


def test_an_unknown_branch(server: GitServer, out: Path) -> None:
    widgets(server)
    assert_fails(
        "checkout", "branch 'nope' not found", server, out, checkout={"type": "branch", "name": "nope"}
    )


def test_an_unknown_commit(server: GitServer, out: Path) -> None:
    widgets(server)
    missing = {"type": "commit", "sha": "0123456789" * 4}
    assert_fails(
        "checkout", "commit 0123456789012345678901234567890123456789 is not", server, out, checkout=missing
    )


def test_a_server_quoting_the_credential_has_it_scrubbed(server: GitServer, out: Path) -> None:
    widgets(server, token=TOKEN)
    server.echo_credentials("acme", "widgets")
    failure = assert_fails("clone", "authorization Basic [REDACTED]", server, out, token=TOKEN)
    assert "bad request" in failure.message


def test_a_pack_over_max_bytes_is_refused(server: GitServer, out: Path) -> None:
    repo = server.create_repo("acme", "widgets")
    repo.commit("main", {"noise.bin": os.urandom(64 * 1024)})
    assert_fails("clone", "larger than the 16384-byte clone limit", server, out, max_bytes=16 * 1024)


@contextmanager
def silent_server() -> Iterator[str]:
    """A loopback port that accepts connections (the kernel does) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_a_silent_server_times_out(out: Path) -> None:
    with silent_server() as base_url, pytest.raises(CheckoutFailed) as failure:
        clone(acme_widgets(), out / "w", base_url=base_url, token=TOKEN, checkout=None, timeout=0.5)
    assert failure.value.error_type == "repository_clone_error"
    assert "did not answer within 0.5s" in str(failure.value)
    assert os.listdir(out) == []


def test_bad_input_is_refused_before_any_request(server: GitServer, out: Path) -> None:
    widgets(server)
    for checkout in ({"type": "commit", "sha": "abc123"}, {"type": "tag", "name": "v1"}, {"type": "branch"}):
        with pytest.raises(ValueError, match="checkout must be"):
            clone(acme_widgets(), out / "w", base_url=server.base_url, token=None, checkout=checkout)
    with pytest.raises(ValueError, match="must not contain credentials"):
        clone(acme_widgets(), out / "w", base_url="http://user:pw@127.0.0.1:1", token=None, checkout=None)
    (out / "w").mkdir()
    with pytest.raises(FileExistsError):
        clone(acme_widgets(), out / "w", base_url=server.base_url, token=None, checkout=None)
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "owner", "name"),
    [
        ("https://github.com/acme/widgets", "acme", "widgets"),
        ("https://github.com/acme/widgets.git", "acme", "widgets"),
        ("https://github.com/acme/widgets/", "acme", "widgets"),
        ("https://GitHub.com/Acme-Corp/my.repo_v2.git/", "Acme-Corp", "my.repo_v2"),
        ("https://github.com/a/.github", "a", ".github"),
    ],
)
def test_accepted_repository_urls(url: str, owner: str, name: str) -> None:
    assert parse_repository_url(url) == RepositoryUrl(url=url, owner=owner, name=name)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://github.com/acme/widgets", "must use https"),
        ("git@github.com:acme/widgets.git", "must use https"),
        ("ssh://github.com/acme/widgets", "must use https"),
        ("https://gitlab.com/acme/widgets", "must be on github.com"),
        ("https://github.com.evil.io/acme/widgets", "must be on github.com"),
        ("https://github.com:8443/acme/widgets", "must be on github.com"),
        ("https://x-access-token:ghs_leak@github.com/acme/widgets", "must not contain credentials"),
        ("https://github.com/acme/widgets?ref=main", "must not have a query string or fragment"),
        ("https://github.com/acme/widgets#readme", "must not have a query string or fragment"),
        ("https://github.com/acme/widgets/tree/main", "must name exactly an owner and a repository"),
        ("https://github.com/acme", "must name exactly an owner and a repository"),
        ("https://github.com//acme/widgets", "must name exactly an owner and a repository"),
        ("https://github.com/acme/..", "invalid repository name"),
        ("https://github.com/../widgets", "invalid owner"),
        ("https://github.com/acme/.git", "invalid repository name"),
        ("https://github.com/acme/wid%2Fgets", "invalid repository name"),
        ("https://github.com/-acme/widgets", "invalid owner"),
        ("https://github.com/acme/widgets\n", "whitespace"),
        ("https://github.com/acme/wïdgets", "non-ASCII"),
        ("", "non-empty"),
    ],
)
def test_refused_repository_urls(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as refusal:
        parse_repository_url(url)
    assert "ghs_leak" not in str(refusal.value)


def test_source_url_joins_the_configured_server() -> None:
    repo = acme_widgets()
    assert source_url(repo, "https://github.com") == "https://github.com/acme/widgets.git"
    assert (
        source_url(repo, "https://git.corp.example/mirror/")
        == "https://git.corp.example/mirror/acme/widgets.git"
    )
    assert repo.public_url == "https://github.com/acme/widgets.git"
    for bad in (
        "ftp://git.corp.example",
        "https://u:p@git.corp.example",
        "https://git.corp.example/?x=1",
        "/srv",
    ):
        with pytest.raises(ValueError, match="git base url"):
            source_url(repo, bad)
