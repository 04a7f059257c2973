"""Clone the GitHub repository of a session's ``github_repository`` resource, with dulwich.

The gateway clones (it holds the token) and later ships the checked-out tree to the sandbox. The
token travels only as an HTTP Basic header to the configured Git server's own origin: never in a
URL, the clone's ``.git/config``, a log line or an error message. Pure Python (no ``git`` binary);
blocking, so callers run these functions in a worker thread.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import urllib3
from dulwich.client import FetchPackResult, HttpGitClient, HTTPUnauthorized, default_urllib3_manager
from dulwich.errors import GitProtocolError, NotGitRepository
from dulwich.index import build_index_from_tree, get_path_element_validator
from dulwich.objects import Commit, ObjectID
from dulwich.refs import HEADREF, Ref
from dulwich.repo import Repo

GITHUB_BASE_URL = "https://github.com"
DEFAULT_MAX_BYTES = 1 << 30
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}")
_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")
_SHA = re.compile(r"[0-9a-fA-F]{40}")
_HEADS, _TAGS = b"refs/heads/", b"refs/tags/"

Kind = Literal["authentication", "checkout", "clone", "forbidden", "not_found"]


@dataclass(frozen=True)
class RepositoryUrl:
    """A validated ``https://github.com/<owner>/<repo>`` URL; ``name`` has no ``.git``."""

    url: str
    owner: str
    name: str

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def public_url(self) -> str:
        """The origin a clone records: the public GitHub URL, whichever server served it."""
        return f"{GITHUB_BASE_URL}/{self.owner}/{self.name}.git"


class CheckoutFailed(Exception):
    """The repository could not be cloned or checked out; the message is fit for a user or model."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message

    @property
    def error_type(self) -> str:
        """The SDK's session error type: ``repository_<kind>_error``."""
        return f"repository_{self.kind}_error"


def _plain_url_problem(url: str) -> str | None:
    """What, common to both kinds of URL we take, is wrong with ``url``."""
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        return "must not contain whitespace, control or non-ASCII characters"
    if "@" in urllib.parse.urlsplit(url).netloc:
        return "must not contain credentials"
    return "must not have a query string or fragment" if "?" in url or "#" in url else None


def parse_repository_url(url: str) -> RepositoryUrl:
    """Accept only ``https://github.com/<owner>/<repo>[.git][/]``; errors never echo ``url``."""

    def bad(problem: str) -> ValueError:
        return ValueError(f"repository url {problem}; expected https://github.com/<owner>/<repo>")

    if not isinstance(url, str) or not url:
        raise bad("must be a non-empty string")
    if problem := _plain_url_problem(url):
        raise bad(problem)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https":
        raise bad("must use https")
    if parts.netloc.lower() != "github.com":
        raise bad("must be on github.com (no other host or port)")
    segments = parts.path.removesuffix("/").split("/")
    if len(segments) != 3 or segments[0]:
        raise bad("must name exactly an owner and a repository")
    owner, name = segments[1], segments[2].removesuffix(".git")
    if not _OWNER.fullmatch(owner):
        raise bad("has an invalid owner (letters, digits and '-', at most 39)")
    if not _REPO.fullmatch(name) or name in (".", ".."):
        raise bad("has an invalid repository name (letters, digits, '.', '_' and '-')")
    return RepositoryUrl(url=url, owner=owner, name=name)


def source_url(repo: RepositoryUrl, base_url: str) -> str:
    """Where to fetch ``repo``: ``base_url`` (GitHub, on-prem, a test's) + ``/<owner>/<name>.git``."""
    parts = urllib.parse.urlsplit(base_url)
    problem = _plain_url_problem(base_url)
    if problem is None and (parts.scheme not in ("http", "https") or not parts.hostname):
        problem = "must be an http(s) URL with a host"
    if problem is not None:
        raise ValueError(f"git base url {problem}")
    return f"{base_url.rstrip('/')}/{repo.owner}/{repo.name}.git"


def clone(
    repo: RepositoryUrl,
    dest: Path,
    *,
    base_url: str,
    token: str | None,
    checkout: Mapping[str, object] | None,
    timeout: float = 120.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    """Clone ``repo`` into ``dest`` (which must not exist) and return the checked-out commit sha.

    ``checkout``: ``{"type": "branch", "name": ...}``, ``{"type": "commit", "sha": ...}`` or None
    for the default branch. Raises CheckoutFailed, leaving nothing at ``dest``; ValueError for bad
    input. Each network wait is bounded by ``timeout``, the fetch by a deadline that far away.
    """
    branch, sha = _parse_checkout(checkout)
    url = source_url(repo, base_url)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"clone destination already exists: {dest}")
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with Repo.init(str(work)) as target:
            result = _fetch(target, url, token, _Budget(repo.slug, timeout, max_bytes), branch, sha)
            head = _check_out(target, repo, result, branch, sha)
        os.chmod(work, 0o755)  # mkdtemp made it private; a clone's root is an ordinary folder
        os.rename(work, dest)
        return head.decode()
    except Exception as exc:
        failure = _explain(exc, repo.slug, token, timeout)
        raise CheckoutFailed(failure.kind, _scrub(failure.message, token)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _parse_checkout(checkout: Mapping[str, object] | None) -> tuple[str | None, str | None]:
    """(branch, sha) from the SDK's Checkout; a malformed one is the caller's 400."""
    if checkout is None:
        return None, None
    kind, name, sha = checkout.get("type"), checkout.get("name"), checkout.get("sha")
    if kind == "branch" and isinstance(name, str) and name.isprintable() and name.strip():
        return name, None
    if kind == "commit" and isinstance(sha, str) and _SHA.fullmatch(sha):
        return None, sha.lower()
    raise ValueError('checkout must be {"type":"branch","name":...} or {"type":"commit","sha":<40 hex>}')


class _Budget:
    """A clone's allowance of time and bytes, checked on every packet the server sends."""

    def __init__(self, slug: str, timeout: float, max_bytes: int) -> None:
        self.slug, self.timeout, self.max_bytes = slug, timeout, max_bytes
        self.deadline, self.received = time.monotonic() + timeout, 0

    def check(self, _: object = None) -> None:
        if time.monotonic() > self.deadline:
            raise CheckoutFailed("clone", f"cloning {self.slug} took longer than {self.timeout:g}s")

    def spend(self, chunk: bytes) -> None:
        self.check()
        self.received += len(chunk)
        if self.received > self.max_bytes:
            raise CheckoutFailed("clone", f"{self.slug} is larger than the {self.max_bytes}-byte clone limit")


def _fetch(
    target: Repo, url: str, token: str | None, budget: _Budget, branch: str | None, sha: str | None
) -> FetchPackResult:
    """Fetch the history ``branch``/``sha`` needs into ``target``, the token sent only as Basic auth."""

    def determine_wants(refs: Mapping[Ref, ObjectID], depth: int | None = None) -> list[ObjectID]:
        budget.check()
        if client.dumb:  # dulwich would hold a dumb server's every object in memory
            raise CheckoutFailed("clone", f"the server for {budget.slug} does not speak smart Git HTTP")
        if sha is not None:  # perhaps no tip: every branch and tag, as git clone takes
            return sorted({v for k, v in refs.items() if k.startswith((_HEADS, _TAGS))})
        wanted = HEADREF if branch is None else Ref(_HEADS + branch.encode())
        if wanted not in refs and branch is None:
            raise CheckoutFailed("checkout", f"repository {budget.slug} is empty")
        if wanted not in refs:
            raise CheckoutFailed("checkout", f"branch {branch!r} not found in {budget.slug}")
        return [refs[wanted]]

    def pack_data(chunk: bytes) -> int:
        budget.spend(chunk)
        return pack_file.write(chunk)

    pool = default_urllib3_manager(None, base_url=url, timeout=budget.timeout)  # no git config or helpers
    pool.connection_pool_kw["retries"] = urllib3.Retry(connect=2, read=0, redirect=5)  # a stall fails once
    user = "x-access-token" if token else None  # how GitHub takes app and installation tokens
    client = HttpGitClient(url, pool_manager=pool, username=user, password=token or None)
    pack_file, commit_pack, abort_pack = target.object_store.add_pack()
    walker, prefixes = target.get_graph_walker(), [HEADREF, Ref(_HEADS), Ref(_TAGS)]
    try:
        result = client.fetch_pack(b"", determine_wants, walker, pack_data, budget.check, ref_prefix=prefixes)
    except BaseException:
        abort_pack()
        raise
    finally:
        pool.clear()
    commit_pack()
    budget.check()
    return result


def _check_out(
    target: Repo, repo: RepositoryUrl, result: FetchPackResult, branch: str | None, sha: str | None
) -> ObjectID:
    """Record origin (the public URL, no token), refs and HEAD as git clone would; write the tree."""
    refs = {k: v for k, v in result.refs.items() if v is not None and v in target.object_store}
    if sha is not None:
        head_ref, head = None, ObjectID(sha.encode())
    elif branch is not None:
        head_ref = Ref(_HEADS + branch.encode())
        head = refs[head_ref]
    else:
        head_ref, head = result.symrefs.get(HEADREF), refs[HEADREF]
    commit = target.object_store[head] if head in target.object_store else None
    if not isinstance(commit, Commit):
        raise CheckoutFailed("checkout", f"commit {sha} is not on any branch or tag of {repo.slug}")
    config = target.get_config()
    config.set((b"remote", b"origin"), b"url", repo.public_url.encode())
    config.set((b"remote", b"origin"), b"fetch", b"+refs/heads/*:refs/remotes/origin/*")
    for ref, value in refs.items():
        if ref.startswith(_HEADS):
            target.refs[Ref(b"refs/remotes/origin/" + ref.removeprefix(_HEADS))] = value
        elif ref.startswith(_TAGS):
            target.refs[ref] = value
    if head_ref is not None and head_ref.startswith(_HEADS):
        target.refs[head_ref] = head
        target.refs.set_symbolic_ref(HEADREF, head_ref)
        config.set((b"branch", head_ref.removeprefix(_HEADS)), b"remote", b"origin")
        config.set((b"branch", head_ref.removeprefix(_HEADS)), b"merge", head_ref)
    else:
        target.refs.remove_if_equals(HEADREF, None)  # a symref to master until now
        target.refs[HEADREF] = head  # detached, as git leaves a checked-out commit
    config.write_to_path()
    build_index_from_tree(  # the committed bytes: no filters (LFS would download), no EOL changes
        target.path,
        target.index_path(),
        target.object_store,
        commit.tree,
        validate_path_element=get_path_element_validator(config),  # refuses .git, .., NTFS tricks
    )
    return head


def _explain(exc: Exception, slug: str, token: str | None, timeout: float) -> CheckoutFailed:
    """The CheckoutFailed that a dulwich, urllib3 or file-system error stands for."""
    cause = exc.__cause__ if isinstance(exc, GitProtocolError) else exc
    cause = cause.reason if isinstance(cause, urllib3.exceptions.MaxRetryError) else cause
    if isinstance(exc, CheckoutFailed):
        return exc
    if isinstance(exc, HTTPUnauthorized):
        why = "the authorization_token was refused" if token else "private or missing, and no token given"
        return CheckoutFailed("authentication", f"could not authenticate to {slug}: {why}")
    if isinstance(exc, NotGitRepository):
        return CheckoutFailed("not_found", f"repository {slug} not found")
    if isinstance(exc, GitProtocolError) and "http resp 403 " in str(exc):
        return CheckoutFailed("forbidden", f"the Git server refused access to {slug}")
    if isinstance(cause, urllib3.exceptions.TimeoutError | TimeoutError):
        return CheckoutFailed("clone", f"the Git server for {slug} did not answer within {timeout:g}s")
    if isinstance(cause, urllib3.exceptions.HTTPError):
        return CheckoutFailed("clone", f"could not reach the Git server for {slug}")
    if isinstance(exc, OSError):  # strerror only: the file name is a host path
        return CheckoutFailed("clone", f"could not clone {slug}: {exc.strerror or type(exc).__name__}")
    return CheckoutFailed("clone", f"could not clone {slug}: {type(exc).__name__}: {exc}")


def _scrub(message: str, token: str | None) -> str:
    """``message`` without any spelling of ``token`` that dulwich or urllib3 could have echoed."""
    if not token:
        return message
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    for secret in sorted({token, urllib.parse.quote(token, safe=""), basic}, key=len, reverse=True):
        message = message.replace(secret, "[REDACTED]")
    return message
