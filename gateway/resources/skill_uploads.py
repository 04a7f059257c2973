"""A skill folder as it is uploaded: names checked, bytes staged on disk, then kept as a version.

Each uploaded file is named by its path in the folder (``my-skill/scripts/run.py``, as the SDK's
``files_from_dir`` sends it). ``relative_path`` turns that name into path components or refuses
it (traversal, absolute paths, backslashes, control characters, empty or oversized parts);
``SkillFolder`` then holds the folder's rules (one top-level directory, no duplicates, a file
never also a directory, at most ``MAX_FILES`` files and ``MAX_TOTAL_BYTES`` bytes) and writes
each file into a private staging directory beside the skills, with ``O_EXCL | O_NOFOLLOW``.
``keep`` renames the staged folder into ``skills/<skill_id>/<version>`` in one step, so a
version directory is complete or absent; ``discard`` removes whatever a refused upload staged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import InvalidRequest, RequestTooLarge
from gateway.schemas.skills import FrontMatterError, SkillMarkdown, parse_skill_md

SKILL_MD = "SKILL.md"
MAX_TOTAL_BYTES = 30 * 1024 * 1024
MAX_FILES = 1000
MAX_DEPTH = 16
MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
LINK_TYPES = frozenset({"inode/symlink", "application/x-symlink", "text/x-symlink"})
"""Part types that declare a link rather than a file's bytes: a skill is regular files only."""
STAGING_PREFIX = ".staging-"
STALE_STAGING_SECONDS = 3600.0
_FORM_ESCAPES = re.compile(r"%(22|0[0-9A-Fa-f]|1[0-9A-Fa-f])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class StoredFile:
    path: str
    """Relative to the skill's folder (its top-level directory left out)."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    directory: str
    """The uploaded top-level directory's name."""
    skill_md: SkillMarkdown
    files: tuple[StoredFile, ...]
    total_bytes: int


def relative_path(raw: str) -> tuple[str, ...]:
    """The components of an uploaded file name, or ``InvalidRequest`` saying why it is no path
    inside a folder. ``%22`` and ``%00``-``%1F`` are decoded first: that is how HTML5 forms (and
    httpx) escape a quote and control characters in a part's filename."""
    name = _FORM_ESCAPES.sub(lambda m: chr(int(m.group(1), 16)), raw)
    shown = repr(name)
    if not name:
        raise InvalidRequest("files: each file needs a filename: its path in the skill folder")
    if _CONTROL.search(name):
        raise InvalidRequest(f"files: {shown}: file names may not contain NUL or control characters")
    if "\\" in name:
        raise InvalidRequest(f"files: {shown}: file names may not contain backslashes; separate with '/'")
    if name.startswith("/") or _DRIVE.match(name):
        raise InvalidRequest(f"files: {shown}: an absolute path; name files relative to the skill folder")
    parts = tuple(name.split("/"))
    if ".." in parts:
        raise InvalidRequest(f"files: {shown}: '..' (path traversal) is not allowed")
    if any(part in ("", ".") for part in parts):
        raise InvalidRequest(f"files: {shown}: empty and '.' path components are not allowed")
    if len(name.encode()) > MAX_PATH_BYTES or len(parts) > MAX_DEPTH:
        raise InvalidRequest(f"files: {shown}: longer than {MAX_PATH_BYTES} bytes or {MAX_DEPTH} levels")
    if any(len(part.encode()) > MAX_COMPONENT_BYTES for part in parts):
        raise InvalidRequest(f"files: {shown}: a path component is longer than {MAX_COMPONENT_BYTES} bytes")
    if len(parts) < 2:
        raise InvalidRequest(
            f"files: {shown} is not inside a folder; upload the skill's folder, e.g. "
            f"'my-skill/{SKILL_MD}' and the files beside it"
        )
    return parts


class SkillFolder:
    """One upload being staged under ``root`` (``DATA_DIR/skills``, the same filesystem as the
    versions, so keeping is a rename). ``add`` and ``reserve`` are bookkeeping, safe on the event
    loop; ``write``, ``seal`` and ``keep`` touch the disk: call them from a worker thread."""

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.staging: Path | None = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
        self.top: str | None = None
        self.total_bytes = 0
        self._names: dict[tuple[str, ...], str] = {}
        self._dirs: set[tuple[str, ...]] = set()
        self._stored: list[StoredFile] = []
        self._fd: int | None = None
        self._current: tuple[str, ...] | None = None
        self._size = 0
        self._hash = hashlib.sha256()

    def add(self, raw_name: str, content_type: str) -> tuple[str, ...]:
        """Admit one more file; its components relative to the skill folder."""
        parts = relative_path(raw_name)
        shown = repr("/".join(parts))
        if content_type.split(";")[0].strip().lower() in LINK_TYPES:
            raise InvalidRequest(f"files: {shown} is declared a link ({content_type}); upload regular files")
        if self.top is None:
            self.top = parts[0]
        elif parts[0] != self.top:
            raise InvalidRequest(
                f"files: {shown} is outside {self.top!r}; all files must be in one top-level directory"
            )
        inner = parts[1:]
        if inner in self._names:
            raise InvalidRequest(f"files: {shown} is uploaded twice")
        if inner in self._dirs or any(inner[:i] in self._names for i in range(1, len(inner))):
            raise InvalidRequest(f"files: {shown} would be both a file and a directory")
        if len(self._names) >= MAX_FILES:
            raise InvalidRequest(f"files: a skill holds at most {MAX_FILES} files")
        self._names[inner] = raw_name
        self._dirs.update(inner[:i] for i in range(1, len(inner)))
        return inner

    def reserve(self, size: int) -> None:
        """Count ``size`` more bytes of file content against the limit before they are written."""
        self.total_bytes += size
        if self.total_bytes > MAX_TOTAL_BYTES:
            raise RequestTooLarge(f"files: a skill's files may total at most {MAX_TOTAL_BYTES} bytes")

    def write(self, batch: list[tuple[str, ...] | bytes]) -> None:
        """Components start the next file (as ``add`` returned them); bytes go to the current one."""
        for item in batch:
            if isinstance(item, tuple):
                self._close()
                self._open(item)
                continue
            assert self._fd is not None
            view = memoryview(item)
            while view:
                view = view[os.write(self._fd, view) :]
            self._size += len(item)
            self._hash.update(item)

    def _open(self, inner: tuple[str, ...]) -> None:
        assert self.staging is not None
        parent = self.staging
        for part in inner[:-1]:
            parent = parent / part
            with contextlib.suppress(FileExistsError):
                parent.mkdir(mode=0o755)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(parent / inner[-1], flags, 0o644)
        self._current, self._size, self._hash = inner, 0, hashlib.sha256()

    def _close(self) -> None:
        if self._fd is None or self._current is None:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        self._stored.append(StoredFile("/".join(self._current), self._size, self._hash.hexdigest()))
        self._fd, self._current = None, None

    def seal(self) -> Manifest:
        """Finish the last file and read SKILL.md: the folder is complete and describes a skill."""
        self._close()
        if self.top is None or self.staging is None:
            raise InvalidRequest("files: field required: the skill folder's files")
        if (SKILL_MD,) not in self._names:
            raise InvalidRequest(
                f"files: {self.top}/{SKILL_MD} is missing; a skill folder has one at its root"
            )
        skill_md = self.staging / SKILL_MD
        try:
            parsed = parse_skill_md(skill_md.read_bytes())
        except FrontMatterError as exc:
            raise InvalidRequest(str(exc)) from None
        stored = tuple(sorted(self._stored, key=lambda f: f.path))
        return Manifest(self.top, parsed, stored, sum(f.size for f in stored))

    def keep(self, skill_dir: Path, first_choice: int) -> str:
        """Rename the staged folder to ``skill_dir/<version>``: the first free number from
        ``first_choice`` on, claimed with an exclusive ``mkdir`` so two uploads (even from two
        gateways sharing the data directory) never take the same one. Returns the version."""
        assert self.staging is not None
        skill_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        version = first_choice
        while True:
            try:
                (skill_dir / str(version)).mkdir(mode=0o700)
                break
            except FileExistsError:
                version += 1
        os.chmod(self.staging, 0o755)
        os.rename(self.staging, skill_dir / str(version))  # replaces the empty directory just made
        self.staging = None
        fd = os.open(skill_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return str(version)

    def discard(self) -> None:
        """Remove what was staged (after a failure; once kept, a no-op). Safe to call twice."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


def remove_stale_staging(root: Path, now: float | None = None) -> int:
    """Remove staging folders killed gateways left behind; returns how many. Blocking."""
    cutoff = (time.time() if now is None else now) - STALE_STAGING_SECONDS
    removed = 0
    for staged in root.glob(STAGING_PREFIX + "*") if root.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            if staged.lstat().st_mtime < cutoff:
                shutil.rmtree(staged, ignore_errors=True)
                removed += 1
    return removed
