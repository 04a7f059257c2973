"""The agent toolset's file tools as plain functions over a ``Workspace``.

Semantics follow the anthropic SDK's ``agent_toolset_20260401`` input types
(``read``, ``write``, ``edit``, ``glob``, ``grep``): the parameter names and meanings
are theirs, so the MCP server is a thin shell around these functions and they can
be tested without any protocol in the way.

Every failure the model should read is raised as ``ToolError`` with a message
written for the model; callers turn it into an ``is_error`` tool result. Paths in
messages and results are the model's ``/workspace/...`` spelling, never host paths.

One concern a module: ``read_write`` (read, write, edit), ``glob_tool``, ``grep_tool``;
``files`` finds and opens files, always beneath the workspace root (``beneath``: the
kernel refuses every way out, whatever the model swaps in meanwhile), ``text`` reads
lines out of them with bounded output, ``errors`` holds ``ToolError``.
"""

from sandbox_server.file_tools.errors import ToolError
from sandbox_server.file_tools.glob_tool import MAX_GLOB_RESULTS, glob
from sandbox_server.file_tools.grep_tool import GREP_SKIPPED_DIRS, MAX_GREP_LINE_CHARS, grep
from sandbox_server.file_tools.read_write import MAX_EDIT_BYTES, edit, read, write
from sandbox_server.file_tools.text import MAX_OUTPUT_BYTES

__all__ = [
    "GREP_SKIPPED_DIRS",
    "MAX_EDIT_BYTES",
    "MAX_GLOB_RESULTS",
    "MAX_GREP_LINE_CHARS",
    "MAX_OUTPUT_BYTES",
    "ToolError",
    "edit",
    "glob",
    "grep",
    "read",
    "write",
]
