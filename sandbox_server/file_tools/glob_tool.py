"""The ``glob`` tool: doublestar patterns matched against the files of a walk beneath the workspace."""

from __future__ import annotations

import itertools
import re
import stat
from dataclasses import dataclass

from sandbox_server.file_tools.errors import ToolError, model_errors
from sandbox_server.file_tools.files import join, regular_files, search_root
from sandbox_server.workspace import Workspace

MAX_GLOB_RESULTS = 1000
"""``glob`` lists at most this many paths (the newest)."""

_GLOB_MAGIC = re.compile(r"[*?\[{\\]")
_MAX_BRACE_EXPANSIONS = 256


@dataclass(frozen=True)
class _GlobMatch:
    shown: str
    mtime: float


@model_errors
def glob(ws: Workspace, pattern: str, path: str | None = None) -> str:
    """List files matching a doublestar ``pattern``, newest first, one ``/workspace/...`` path a line.

    ``*`` and ``?`` stay within one path segment, ``**`` spans any number of
    segments, ``[...]`` and ``{a,b}`` work as in doublestar. Only regular files are
    listed. The pattern is relative to ``path`` (default ``/workspace``); an
    absolute pattern must lie under ``/workspace`` and then ``path`` must be omitted.
    Ties in modification time are broken by path so the order is stable.
    """
    base, relative_pattern = _glob_base(ws, pattern, path)
    start, rest = _literal_prefix(base, relative_pattern)
    regex = _compile_glob(rest)
    matches: list[_GlobMatch] = []
    try:
        for entry, info in regular_files(ws, start):
            if regex.fullmatch(entry.path):
                matches.append(_GlobMatch(ws.mount_path(join(start, entry.path)), info.st_mtime))
    except (FileNotFoundError, NotADirectoryError):
        pass  # the literal prefix does not exist: nothing matches
    where = ws.mount_path(base)
    if not matches:
        return f"No files matched {pattern} under {where}."
    matches.sort(key=lambda m: (-m.mtime, m.shown))
    lines = [m.shown for m in matches[:MAX_GLOB_RESULTS]]
    if len(matches) > MAX_GLOB_RESULTS:
        lines.append(
            f"[showing the {MAX_GLOB_RESULTS} newest of {len(matches)} matches; narrow the pattern or path]"
        )
    return "\n".join(lines)


def _glob_base(ws: Workspace, pattern: str, path: str | None) -> tuple[str, str]:
    """Split the request into a base directory (relative to the root) and a pattern relative to it."""
    if not pattern:
        raise ToolError("pattern is empty; give a glob such as **/*.py")
    if "\x00" in pattern:
        raise ToolError("pattern contains a NUL byte.")
    if pattern.startswith("/"):
        if path:
            raise ToolError("Give either an absolute pattern or path, not both.")
        mount = ws.mount_path("")
        if not pattern.startswith(mount + "/"):
            raise ToolError(f"Access denied: absolute patterns must be under {mount}.")
        pattern = pattern[len(mount) + 1 :]
    pattern = pattern.removeprefix("./")
    if ".." in pattern.split("/"):
        raise ToolError(
            "pattern may not contain '..'; pass a path to search another directory of the workspace."
        )
    base, info = search_root(ws, path)
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise ToolError(f"{path} is not a directory.")
    return base, pattern


def _literal_prefix(base: str, pattern: str) -> tuple[str, str]:
    """Walk only below the pattern's leading literal directories (``src/**`` need not scan ``node_modules``).

    The prefix is opened beneath the root like any other path, so it cannot lead out of
    the workspace; a prefix that does not exist means no matches.
    """
    segments = [s for s in pattern.split("/") if s not in ("", ".")]
    literal: list[str] = []
    while len(segments) > 1 and not _GLOB_MAGIC.search(segments[0]):
        literal.append(segments.pop(0))
    return join(base, "/".join(literal)) if literal else base, "/".join(segments)


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
