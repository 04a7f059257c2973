"""The ``grep`` tool: a regular expression over the text files of a walk beneath the workspace."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator

from sandbox_server.file_tools.errors import ToolError, model_errors
from sandbox_server.file_tools.files import join, open_entry, open_regular, regular_files, search_root
from sandbox_server.file_tools.text import (
    BINARY_SNIFF_BYTES,
    MAX_OUTPUT_BYTES,
    decode,
    iter_lines,
    looks_binary,
)
from sandbox_server.workspace import Workspace

MAX_GREP_LINE_CHARS = 500
"""A matching line longer than this is shown cut, so minified files stay readable."""

GREP_LINE_BYTES = 1024 * 1024
"""``grep`` matches within the first MiB of each line; the rest of a longer line is skipped."""

GREP_SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})
"""Version-control internals are noise for a content search (``glob`` still lists them)."""


@model_errors
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
    base, info = search_root(ws, path)
    out: list[str] = []
    size = 0
    for shown, fd in _files(ws, base, info, path):
        for number, text in _grep_file(fd, regex):
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
        return f"No matches for {pattern} under {ws.mount_path(base)}."
    return "".join(out)


def _files(
    ws: Workspace, base: str, info: os.stat_result | None, path: str | None
) -> Iterator[tuple[str, int]]:
    """``(shown path, open descriptor)`` of each file to search; the descriptor is the caller's to close
    (``_grep_file`` does). Files that cannot be opened are skipped."""
    if info is not None and not stat.S_ISDIR(info.st_mode):
        try:
            yield ws.mount_path(base), open_regular(ws, base, path or base, os.O_RDONLY)
        except ToolError:
            return
        return
    for entry, _info in regular_files(ws, base, GREP_SKIPPED_DIRS):
        fd = open_entry(ws, base, entry)
        if fd is not None:
            yield ws.mount_path(join(base, entry.path)), fd


def _grep_file(fd: int, regex: re.Pattern[str]) -> Iterator[tuple[int, str]]:
    """Matching ``(line_number, line)`` pairs of one open file (closed here); binary files yield nothing."""
    with os.fdopen(fd, "rb") as f:
        if looks_binary(f.read(BINARY_SNIFF_BYTES)):
            return
        f.seek(0)
        for number, raw in enumerate(iter_lines(f, GREP_LINE_BYTES), start=1):
            text = decode(raw)
            if regex.search(text):
                yield number, text
