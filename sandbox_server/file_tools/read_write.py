"""The ``read``, ``write`` and ``edit`` tools: one file at a time, opened beneath the workspace root."""

from __future__ import annotations

import os
import stat

from sandbox_server.file_tools.errors import ToolError, model_errors
from sandbox_server.file_tools.files import open_regular
from sandbox_server.file_tools.text import (
    BINARY_SNIFF_BYTES,
    MAX_OUTPUT_BYTES,
    cut_utf8,
    decode,
    iter_lines,
    looks_binary,
)
from sandbox_server.workspace import Workspace

MAX_EDIT_BYTES = 16 * 1024 * 1024
"""``edit`` loads the whole file; larger files are refused rather than risk memory."""


@model_errors
def read(ws: Workspace, file_path: str, view_range: list[int] | None = None) -> str:
    """Return the file's lines numbered like ``cat -n`` (number right-aligned in 6, a tab, the line).

    ``view_range`` is ``[start_line, end_line]``, 1-indexed and inclusive; an
    ``end_line`` of 0 or less means "to end of file". Output stops at
    ``MAX_OUTPUT_BYTES`` with a marker naming the next line to ask for.
    """
    start, end = _parse_view_range(view_range)
    fd = open_regular(ws, ws.relative(file_path), file_path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        if looks_binary(f.read(BINARY_SNIFF_BYTES)):
            raise ToolError(f"{file_path} is a binary file; read shows text files only.")
        f.seek(0)
        out: list[str] = []
        size = 0
        number = 0
        for number, raw in enumerate(iter_lines(f, MAX_OUTPUT_BYTES), start=1):
            if number < start:
                continue
            if end is not None and number > end:
                break
            entry = f"{number:>6}\t{decode(raw)}\n"
            entry_size = len(entry.encode("utf-8"))
            if size + entry_size > MAX_OUTPUT_BYTES:
                if not out:
                    out.append(cut_utf8(entry, MAX_OUTPUT_BYTES) + "\n")
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


@model_errors
def write(ws: Workspace, file_path: str, content: str) -> str:
    """Write ``content`` (UTF-8) as the whole file, creating it and any missing parent directories.

    Parents are made one ``mkdirat`` at a time beneath the root (``Workspace.makedirs``) and
    the file is created by an open resolved beneath the root, so a parent swapped for a
    symlink at any moment makes the call fail instead of writing elsewhere.
    """
    relative = ws.relative(file_path)
    ws.require_writable(relative, file_path)
    cannot_create = f"Cannot create {file_path}: a parent of this path is a file, not a directory."
    try:
        existed = True
        if stat.S_ISDIR(ws.stat_path(relative, shown=file_path).st_mode):
            raise ToolError(f"{file_path} is a directory, not a file.")
    except FileNotFoundError:
        existed = False
    except NotADirectoryError:
        raise ToolError(cannot_create) from None
    try:
        os.close(ws.makedirs(relative.rpartition("/")[0], shown=file_path))
    except (FileExistsError, NotADirectoryError):
        raise ToolError(cannot_create) from None
    data = content.encode("utf-8")
    fd = open_regular(ws, relative, file_path, os.O_WRONLY | os.O_CREAT)
    with os.fdopen(fd, "wb") as f:
        f.truncate(0)  # only now: the opened file was checked to be a regular file inside
        f.write(data)
    verb = "Overwrote" if existed else "Created"
    return f"{verb} {ws.mount_path(relative)} ({len(data)} bytes)"


@model_errors
def edit(
    ws: Workspace, file_path: str, old_string: str, new_string: str, replace_all: bool | None = None
) -> str:
    """Replace ``old_string`` with ``new_string``: exactly one occurrence, or all with ``replace_all``.

    The file is read and rewritten through one descriptor, so what is changed is what was read.
    """
    if not old_string:
        raise ToolError("old_string is empty; give the exact text to replace (use write to create a file).")
    if old_string == new_string:
        raise ToolError("old_string and new_string are identical; there is nothing to change.")
    relative = ws.relative(file_path)
    ws.require_writable(relative, file_path)
    fd = open_regular(ws, relative, file_path, os.O_RDWR)
    with os.fdopen(fd, "r+b") as f:
        data = f.read(MAX_EDIT_BYTES + 1)
        if len(data) > MAX_EDIT_BYTES:
            raise ToolError(
                f"{file_path} is larger than {MAX_EDIT_BYTES // (1024 * 1024)} MiB; edit refuses it."
            )
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
        f.seek(0)
        f.truncate(0)
        f.write(text.replace(old_string, new_string).encode("utf-8"))
    noun = "occurrence" if count == 1 else "occurrences"
    return f"Replaced {count} {noun} in {ws.mount_path(relative)}"
