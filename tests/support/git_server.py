"""A real Git smart-HTTP server on loopback, standing in for GitHub in clone tests.

``dulwich.web``'s WSGI application behind a threaded ``wsgiref`` server, started on a free port by
``serve_git`` and stopped when the block ends. Repositories are bare dulwich repositories built
commit by commit (``BareRepo.commit``: whole snapshots of files, including executables and
symlinks), so no ``git`` binary is needed. A repository can require a token, taken like GitHub
takes installation tokens (HTTP Basic ``x-access-token:<token>``; 401 otherwise), and the server
keeps every request it saw, so a test can check where the token travelled.
"""

from __future__ import annotations

import base64
import io
import socketserver
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from dulwich.errors import NotGitRepository
from dulwich.objects import Blob, Commit, ObjectID, Tree
from dulwich.protocol import pkt_line
from dulwich.refs import HEADREF, Ref
from dulwich.repo import Repo
from dulwich.server import Backend, BackendRepo
from dulwich.web import make_wsgi_chain

FILE, EXECUTABLE, SYMLINK, DIRECTORY = 0o100644, 0o100755, 0o120000, 0o040000


@dataclass(frozen=True)
class Executable:
    """A file committed with mode 100755."""

    data: bytes


@dataclass(frozen=True)
class Symlink:
    """A symbolic link committed with mode 120000; the blob holds the link's target."""

    target: str


Content = bytes | Executable | Symlink


@dataclass(frozen=True)
class SeenRequest:
    """One request as the server received it (headers with their WSGI names, e.g. HTTP_AUTHORIZATION)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


class BareRepo:
    """A bare repository the server serves; each commit is a whole snapshot of the files."""

    def __init__(self, repo: Repo, default_branch: str) -> None:
        self.repo = repo
        repo.refs.set_symbolic_ref(HEADREF, Ref(b"refs/heads/" + default_branch.encode()))
        self._clock = int(time.time())

    def commit(
        self, branch: str, files: Mapping[str, Content], *, parent: str | None = None, message: str = "change"
    ) -> str:
        """Commit ``files`` on ``branch`` (on top of ``parent``, else the branch's tip) and return its sha."""
        ref = Ref(b"refs/heads/" + branch.encode())
        commit = Commit()
        commit.tree = self._tree(files)
        if parent is not None:
            commit.parents = [ObjectID(parent.encode())]
        elif ref in self.repo.refs:
            commit.parents = [self.repo.refs[ref]]
        commit.author = commit.committer = b"Test <test@example.com>"
        self._clock += 1  # distinct, increasing times, so history has one order
        commit.author_time = commit.commit_time = self._clock
        commit.author_timezone = commit.commit_timezone = 0
        commit.message = message.encode() + b"\n"
        self.repo.object_store.add_object(commit)
        self.repo.refs[ref] = commit.id
        return commit.id.decode()

    def _tree(self, files: Mapping[str, Content]) -> ObjectID:
        root: dict[str, Any] = {}
        for path, content in files.items():
            *folders, leaf = path.split("/")
            node = root
            for folder in folders:
                node = node.setdefault(folder, {})
            node[leaf] = content
        return self._write_tree(root)

    def _write_tree(self, node: Mapping[str, Any]) -> ObjectID:
        tree = Tree()
        for name, value in node.items():
            if isinstance(value, dict):
                tree.add(name.encode(), DIRECTORY, self._write_tree(value))
                continue
            mode, data = _mode_and_data(value)
            blob = Blob.from_string(data)
            self.repo.object_store.add_object(blob)
            tree.add(name.encode(), mode, blob.id)
        self.repo.object_store.add_object(tree)
        return tree.id


def _mode_and_data(content: Content) -> tuple[int, bytes]:
    if isinstance(content, Executable):
        return EXECUTABLE, content.data
    if isinstance(content, Symlink):
        return SYMLINK, content.target.encode()
    return FILE, content


@dataclass
class GitServer:
    """The running server: create repositories on it, read what it was asked."""

    root: Path
    base_url: str = ""
    _repos: dict[str, Repo] = field(default_factory=dict)
    _tokens: dict[str, str] = field(default_factory=dict)
    _echoing: set[str] = field(default_factory=set)
    _redirects: dict[str, str] = field(default_factory=dict)
    _seen: list[SeenRequest] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create_repo(
        self, owner: str, name: str, *, token: str | None = None, default_branch: str = "main"
    ) -> BareRepo:
        """A new empty bare repository served at ``/<owner>/<name>.git``, private if ``token``."""
        path = self.root / owner / f"{name}.git"
        path.mkdir(parents=True)
        repo = Repo.init_bare(str(path))
        prefix = f"/{owner}/{name}.git"
        with self._lock:
            self._repos[prefix] = repo
            if token is not None:
                self._tokens[prefix] = token
        return BareRepo(repo, default_branch)

    def echo_credentials(self, owner: str, name: str) -> None:
        """Make the repository answer every fetch with a Git error quoting the request's Authorization."""
        with self._lock:
            self._echoing.add(f"/{owner}/{name}.git")

    def redirect(self, owner: str, name: str, to_base_url: str) -> None:
        """Send every request for the repository to the same path on another server (302)."""
        with self._lock:
            self._redirects[f"/{owner}/{name}.git"] = to_base_url

    @property
    def requests(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def app(self) -> Any:
        """The WSGI application: record, check the token, then let dulwich.web answer."""
        git = make_wsgi_chain(_Backend(self))

        def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            headers = {k: v for k, v in environ.items() if k.startswith("HTTP_") or k.startswith("CONTENT_")}
            seen = SeenRequest(
                environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"], headers, body
            )
            with self._lock:
                self._seen.append(seen)
                prefix = next((p for p in self._repos if seen.path.startswith(p + "/")), "")
                token, echoing = self._tokens.get(prefix), prefix in self._echoing
                elsewhere = self._redirects.get(prefix)
            if elsewhere is not None:
                query = f"?{seen.query}" if seen.query else ""
                start_response("302 Found", [("Location", f"{elsewhere}{seen.path}{query}")])
                return [b""]
            if token is not None and environ.get("HTTP_AUTHORIZATION") != basic_auth(token):
                start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
                return [b"authentication required\n"]
            if echoing:  # a server that quotes the credential back in its error
                error = f"ERR bad request, authorization {environ.get('HTTP_AUTHORIZATION')}"
                start_response("200 OK", [("Content-Type", "application/x-git-upload-pack-advertisement")])
                return [pkt_line(b"# service=git-upload-pack\n") + b"0000" + pkt_line(error.encode())]
            return git(environ, start_response)

        return application


class _Backend(Backend):
    """dulwich's view of the server's repositories, safe while tests add more."""

    def __init__(self, server: GitServer) -> None:
        self.server = server

    def open_repository(self, path: str | bytes) -> BackendRepo:  # dulwich.web passes either
        key = path.decode() if isinstance(path, bytes) else path
        with self.server._lock:
            repo = self.server._repos.get(key)
        if repo is None:
            raise NotGitRepository(f"no repository at {key}")
        return repo


def basic_auth(token: str) -> str:
    """The Authorization header GitHub expects for an app or installation token."""
    return "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = False  # server_close() waits for every request thread


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_git(root: Path) -> Iterator[GitServer]:
    """A Git smart-HTTP server on a free loopback port, its repositories under ``root``."""
    server = GitServer(root)
    httpd = make_server("127.0.0.1", 0, server.app(), _ThreadingWSGIServer, _QuietHandler)
    server.base_url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="git-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        for repo in server._repos.values():
            repo.close()
