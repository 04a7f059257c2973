"""The agent toolset's file tools as plain functions over a ``Workspace``.

Semantics follow the anthropic SDK's ``agent_toolset_20260401`` input types
(``read``, ``write``, ``edit``, ``glob``, ``grep``): the parameter names and meanings
are theirs, so the MCP server is a thin shell around these functions and they can
be tested without any protocol in the way.

Every failure the model should read is raised as ``ToolError`` with a message
written for the model; callers turn it into an ``is_error`` tool result. Paths in
messages and results are the model's ``/workspace/...`` spelling, never host paths.

Files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked after opening
(regular file, really inside the workspace), so a FIFO cannot hang a tool and a
symlink swapped in after the path check is still refused. Output is capped
(``MAX_OUTPUT_BYTES``) so one huge file cannot flood the model's context.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ParamSpec, TypeVar

from sandbox_server.workspace import Workspace, WorkspaceError

MAX_OUTPUT_BYTES = 256 * 1024
"""Cap on the text ``read`` and ``grep`` return; a marker says when it was hit."""

MAX_EDIT_BYTES = 16 * 1024 * 1024
"""``edit`` loads the whole file; larger files are refused rather than risk memory."""

MAX_GLOB_RESULTS = 1000
"""``glob`` lists at most this many paths (the newest)."""

MAX_GREP_LINE_CHARS = 500
"""A matching line longer than this is shown cut, so minified files stay readable."""

GREP_LINE_BYTES = 1024 * 1024
"""``grep`` matches within the first MiB of each line; the rest of a longer line is skipped."""

BINARY_SNIFF_BYTES = 8192
GREP_SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})
"""Version-control internals are noise for a content search (``glob`` still lists them)."""

_GLOB_MAGIC = re.compile(r"[*?\[{\\]")
_MAX_BRACE_EXPANSIONS = 256


class ToolError(Exception):
    """A tool failed in a way the model should read and react to; ``str()`` is the message."""


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _model_errors(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Turn containment refusals and stray OS errors into ``ToolError`` at the tool boundary."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except WorkspaceError as exc:
            raise ToolError(str(exc)) from exc
        except OSError as exc:
            raise ToolError(f"{fn.__name__} failed: {exc.strerror or exc}") from exc

    return wrapper


# --------------------------------------------------------------------------- opening files


def _open_regular(ws: Workspace, host: Path, shown: str, flags: int) -> int:
    """Open ``host`` without following a final symlink and insist on a regular file inside ``ws``."""
    try:
        fd = os.open(host, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except FileNotFoundError:
        raise ToolError(f"File does not exist: {shown}") from None
    except IsADirectoryError:
        raise ToolError(f"{shown} is a directory, not a file.") from None
    except NotADirectoryError:
        raise ToolError(f"{shown}: a parent of this path is not a directory.") from None
    except PermissionError:
        raise ToolError(f"Permission denied: {shown}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ToolError(f"Access denied: {shown} is a symbolic link.") from None
        if exc.errno == errno.ENXIO:
            raise ToolError(f"{shown} is not a regular file.") from None
        raise ToolError(f"Cannot open {shown}: {exc.strerror}") from None
    try:
        try:
            ws.verify_open_fd(fd, shown)
        except WorkspaceError as exc:
            raise ToolError(str(exc)) from None
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ToolError(f"{shown} is a directory, not a file.")
        if not stat.S_ISREG(mode):
            raise ToolError(f"{shown} is not a regular file.")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _iter_lines(f: BinaryIO, keep: int) -> Iterator[bytes]:
    """Yield each line without its newline, holding at most ``keep`` bytes of any one line.

    The remainder of a longer line is read and dropped in ``keep``-sized pieces, so
    line numbers stay right and a single gigantic line never sits in memory.
    """
    while True:
        chunk = f.readline(keep)
        if not chunk:
            return
        if chunk.endswith(b"\n"):
            yield chunk[:-1]
            continue
        if len(chunk) == keep:
            while True:
                rest = f.readline(keep)
                if not rest or rest.endswith(b"\n"):
                    break
        yield chunk


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").removesuffix("\r")


def _looks_binary(head: bytes) -> bool:
    return b"\x00" in head


def _cut_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


# --------------------------------------------------------------------------- read


@_model_errors
def read(ws: Workspace, file_path: str, view_range: list[int] | None = None) -> str:
    """Return the file's lines numbered like ``cat -n`` (number right-aligned in 6, a tab, the line).

    ``view_range`` is ``[start_line, end_line]``, 1-indexed and inclusive; an
    ``end_line`` of 0 or less means "to end of file". Output stops at
    ``MAX_OUTPUT_BYTES`` with a marker naming the next line to ask for.
    """
    start, end = _parse_view_range(view_range)
    host = ws.resolve(file_path)
    fd = _open_regular(ws, host, file_path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        if _looks_binary(f.read(BINARY_SNIFF_BYTES)):
            raise ToolError(f"{file_path} is a binary file; read shows text files only.")
        f.seek(0)
        out: list[str] = []
        size = 0
        number = 0
        for number, raw in enumerate(_iter_lines(f, MAX_OUTPUT_BYTES), start=1):
            if number < start:
                continue
            if end is not None and number > end:
                break
            entry = f"{number:>6}\t{_decode(raw)}\n"
            entry_size = len(entry.encode("utf-8"))
            if size + entry_size > MAX_OUTPUT_BYTES:
                if not out:
                    out.append(_cut_utf8(entry, MAX_OUTPUT_BYTES) + "\n")
                    number += 1
                out.append(
                    f"[output truncated at {MAX_OUTPUT_BYTES // 1024} KB; "
                    f"use view_range=[{number}, 0] to read on from line {number}]\n"
                )
                return "".join(out)
            out.append(entry)
            size += entry_size
    if number == 0:
        if start > 1:
            raise ToolError(f"view_range starts at line {start} but {file_path} is empty.")
        return f"({file_path} is empty)"
    if not out:
        raise ToolError(f"view_range starts at line {start} but {file_path} has only {number} lines.")
    return "".join(out)


def _parse_view_range(view_range: list[int] | None) -> tuple[int, int | None]:
    """Validate ``view_range``; return ``(start, end)`` with ``end=None`` meaning end of file."""
    if view_range is None:
        return 1, None
    if len(view_range) != 2:
        raise ToolError(
            "view_range must be [start_line, end_line] (1-indexed, inclusive; end_line <= 0 = to EOF)."
        )
    start, end = view_range
    if start < 1:
        raise ToolError(f"view_range start_line must be 1 or more, got {start}.")
    if end <= 0:
        return start, None
    if end < start:
        raise ToolError(f"view_range end_line ({end}) is before start_line ({start}).")
    return start, end


# --------------------------------------------------------------------------- write and edit


def _write_bytes(ws: Workspace, host: Path, shown: str, data: bytes) -> None:
    """Create or overwrite ``host`` with ``data``, truncating only after the opened file checked out."""
    fd = _open_regular(ws, host, shown, os.O_WRONLY | os.O_CREAT)
    with os.fdopen(fd, "wb") as f:
        f.truncate(0)
        f.write(data)


@_model_errors
def write(ws: Workspace, file_path: str, content: str) -> str:
    """Write ``content`` (UTF-8) as the whole file, creating it and any missing parent directories."""
    host = ws.resolve(file_path)
    if host.is_dir():
        raise ToolError(f"{file_path} is a directory, not a file.")
    existed = host.exists()
    try:
        host.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ToolError(
            f"Cannot create {file_path}: a parent of this path is a file, not a directory."
        ) from None
    data = content.encode("utf-8")
    _write_bytes(ws, host, file_path, data)
    verb = "Overwrote" if existed else "Created"
    return f"{verb} {ws.model_path(host)} ({len(data)} bytes)"


@_model_errors
def edit(
    ws: Workspace, file_path: str, old_string: str, new_string: str, replace_all: bool | None = None
) -> str:
    """Replace ``old_string`` with ``new_string``: exactly one occurrence, or all with ``replace_all``."""
    if not old_string:
        raise ToolError("old_string is empty; give the exact text to replace (use write to create a file).")
    if old_string == new_string:
        raise ToolError("old_string and new_string are identical; there is nothing to change.")
    host = ws.resolve(file_path)
    fd = _open_regular(ws, host, file_path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_EDIT_BYTES + 1)
    if len(data) > MAX_EDIT_BYTES:
        raise ToolError(f"{file_path} is larger than {MAX_EDIT_BYTES // (1024 * 1024)} MiB; edit refuses it.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ToolError(f"{file_path} is not UTF-8 text; edit refuses to change it.") from None
    count = text.count(old_string)
    if count == 0:
        raise ToolError(
            f"old_string was not found in {file_path}; it must match the file exactly, "
            "including whitespace and indentation (read the file to check)."
        )
    if count > 1 and not replace_all:
        raise ToolError(
            f"old_string occurs {count} times in {file_path}; include more surrounding text to make "
            "it unique, or set replace_all to true to replace every occurrence."
        )
    _write_bytes(ws, host, file_path, text.replace(old_string, new_string).encode("utf-8"))
    noun = "occurrence" if count == 1 else "occurrences"
    return f"Replaced {count} {noun} in {ws.model_path(host)}"


# --------------------------------------------------------------------------- walking the tree


def _walk_files(
    ws: Workspace, top: Path, skip_dirs: frozenset[str] = frozenset()
) -> Iterator[tuple[Path, str]]:
    """Yield ``(host_path, path_relative_to_top)`` for every regular file under ``top``, sorted by name.

    Symlinked directories are never descended into; a symlinked file is yielded
    only when it resolves to a regular file inside the workspace. Entries that
    cannot be read are skipped silently: a search should not fail on one of them.
    """
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        rel_dir = os.path.relpath(dirpath, top)
        for name in sorted(filenames):
            host = Path(dirpath, name)
            if host.is_symlink():
                real = os.path.realpath(host)
                if not ws.contains(real):
                    continue
            try:
                if not stat.S_ISREG(host.stat().st_mode):
                    continue
            except OSError:
                continue
            yield host, name if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{name}"


def _search_root(ws: Workspace, path: str | None) -> Path:
    """Resolve the optional ``path`` argument of glob/grep (default: the workspace root)."""
    if path is None or path == "":
        return ws.root
    host = ws.resolve(path)
    if not host.exists():
        raise ToolError(f"Path does not exist: {path}")
    return host


# --------------------------------------------------------------------------- glob


@dataclass(frozen=True)
class _GlobMatch:
    host: Path
    mtime: float


@_model_errors
def glob(ws: Workspace, pattern: str, path: str | None = None) -> str:
    """List files matching a doublestar ``pattern``, newest first, one ``/workspace/...`` path a line.

    ``*`` and ``?`` stay within one path segment, ``**`` spans any number of
    segments, ``[...]`` and ``{a,b}`` work as in doublestar. Only regular files are
    listed. The pattern is relative to ``path`` (default ``/workspace``); an
    absolute pattern must lie under ``/workspace`` and then ``path`` must be omitted.
    Ties in modification time are broken by path so the order is stable.
    """
    base, relative_pattern = _glob_base(ws, pattern, path)
    if not base.is_dir():
        raise ToolError(f"{path} is not a directory.")
    start, rest = _literal_prefix(ws, base, relative_pattern)
    matches: list[_GlobMatch] = []
    if start is not None and start.is_dir():
        regex = _compile_glob(rest)
        for host, rel in _walk_files(ws, start):
            if regex.fullmatch(rel):
                try:
                    matches.append(_GlobMatch(host, host.stat().st_mtime))
                except OSError:
                    continue
    where = ws.model_path(base)
    if not matches:
        return f"No files matched {pattern} under {where}."
    matches.sort(key=lambda m: (-m.mtime, str(m.host)))
    lines = [ws.model_path(m.host) for m in matches[:MAX_GLOB_RESULTS]]
    if len(matches) > MAX_GLOB_RESULTS:
        lines.append(
            f"[showing the {MAX_GLOB_RESULTS} newest of {len(matches)} matches; narrow the pattern or path]"
        )
    return "\n".join(lines)


def _glob_base(ws: Workspace, pattern: str, path: str | None) -> tuple[Path, str]:
    """Split the request into a resolved base directory and a pattern relative to it."""
    if not pattern:
        raise ToolError("pattern is empty; give a glob such as **/*.py")
    if "\x00" in pattern:
        raise ToolError("pattern contains a NUL byte.")
    if pattern.startswith("/"):
        if path:
            raise ToolError("Give either an absolute pattern or path, not both.")
        mount = ws.model_path(ws.root)
        if not pattern.startswith(mount + "/"):
            raise ToolError(f"Access denied: absolute patterns must be under {mount}.")
        pattern = pattern[len(mount) + 1 :]
    pattern = pattern.removeprefix("./")
    if ".." in pattern.split("/"):
        raise ToolError(
            "pattern may not contain '..'; pass a path to search another directory of the workspace."
        )
    return _search_root(ws, path), pattern


def _literal_prefix(ws: Workspace, base: Path, pattern: str) -> tuple[Path | None, str]:
    """Walk only below the pattern's leading literal directories (``src/**`` need not scan ``node_modules``).

    The prefix goes through ``Workspace.resolve`` like any other path, so it cannot
    lead out of the workspace; a prefix that does not exist means no matches.
    """
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    literal: list[str] = []
    while len(segments) > 1 and not _GLOB_MAGIC.search(segments[0]):
        literal.append(segments.pop(0))
    rest = "/".join(segments)
    if not literal:
        return base, rest
    start = ws.resolve(f"{ws.model_path(base)}/{'/'.join(literal)}")
    return (start if start.exists() else None), rest


def _expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` alternatives (nesting allowed); an unmatched brace is literal."""
    depth = 0
    open_at = -1
    commas: list[int] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            if depth == 0:
                open_at = i
                commas = []
            depth += 1
        elif c == "," and depth == 1:
            commas.append(i)
        elif c == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                head, tail = pattern[:open_at], pattern[i + 1 :]
                bounds = [open_at, *commas, i]
                options = [pattern[a + 1 : b] for a, b in itertools.pairwise(bounds)]
                expanded: list[str] = []
                for option in options:
                    for suffix in _expand_braces(tail):
                        expanded.extend(_expand_braces(head + option + suffix))
                        if len(expanded) > _MAX_BRACE_EXPANSIONS:
                            raise ToolError("pattern expands to too many alternatives; simplify its braces.")
                return expanded
        i += 1
    return [pattern]


def _translate_segment(segment: str) -> str:
    """Regex for one path segment: ``*`` and ``?`` never cross ``/``."""
    out: list[str] = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            while i + 1 < len(segment) and segment[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < len(segment):
            i += 1
            out.append(re.escape(segment[i]))
        elif c == "[":
            # The first character of a set (after any negation) is a member, even ``]``.
            close = segment.find("]", i + 3 if segment[i + 1 : i + 2] in ("!", "^") else i + 2)
            if close == -1:
                out.append(re.escape(c))
            else:
                body = segment[i + 1 : close]
                negate = body[:1] in ("!", "^")
                body = body[1:] if negate else body
                body = body.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
                out.append(f"[{'^/' if negate else ''}{body}]")
                i = close
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _translate(pattern: str) -> str:
    segments = pattern.split("/")
    out: list[str] = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_translate_segment(segment) + ("" if last else "/"))
    return "".join(out)


def _compile_glob(pattern: str) -> re.Pattern[str]:
    """One regex for a doublestar pattern, matched against ``/``-separated relative paths."""
    alternatives = [_translate(p) for p in _expand_braces(pattern)]
    try:
        return re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL)
    except re.error as exc:
        raise ToolError(f"Invalid glob pattern {pattern!r}: {exc}") from exc


# --------------------------------------------------------------------------- grep


@_model_errors
def grep(ws: Workspace, pattern: str, path: str | None = None) -> str:
    """Search files for a Python ``re`` pattern; return ``/workspace/file:line:text`` per matching line.

    ``path`` may be a directory (searched recursively, in name order) or one file.
    Binary files (a NUL byte near the start) and version-control directories are
    skipped. Long lines are shown cut; total output stops at ``MAX_OUTPUT_BYTES``.
    """
    if not pattern:
        raise ToolError("pattern is empty; give a regular expression.")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ToolError(f"Invalid regular expression {pattern!r}: {exc}") from exc
    base = _search_root(ws, path)
    if base.is_dir():
        files: Iterator[tuple[Path, str]] = _walk_files(ws, base, GREP_SKIPPED_DIRS)
    else:
        files = iter([(base, base.name)])
    out: list[str] = []
    size = 0
    for host, _rel in files:
        shown = ws.model_path(host)
        for number, text in _grep_file(ws, host, shown, regex):
            if len(text) > MAX_GREP_LINE_CHARS:
                text = text[:MAX_GREP_LINE_CHARS] + " [line truncated]"
            entry = f"{shown}:{number}:{text}\n"
            size += len(entry.encode("utf-8"))
            if size > MAX_OUTPUT_BYTES:
                out.append(
                    f"[output truncated at {MAX_OUTPUT_BYTES // 1024} KB; narrow the pattern or path]\n"
                )
                return "".join(out)
            out.append(entry)
    if not out:
        return f"No matches for {pattern} under {ws.model_path(base)}."
    return "".join(out)


def _grep_file(ws: Workspace, host: Path, shown: str, regex: re.Pattern[str]) -> Iterator[tuple[int, str]]:
    """Matching ``(line_number, line)`` pairs of one text file; unreadable or binary files yield nothing."""
    try:
        fd = _open_regular(ws, host, shown, os.O_RDONLY)
    except ToolError:
        return
    with os.fdopen(fd, "rb") as f:
        if _looks_binary(f.read(BINARY_SNIFF_BYTES)):
            return
        f.seek(0)
        for number, raw in enumerate(_iter_lines(f, GREP_LINE_BYTES), start=1):
            text = _decode(raw)
            if regex.search(text):
                yield number, text
