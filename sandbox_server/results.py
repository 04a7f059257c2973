"""Build MCP tool results: one text block, flagged as an error when the model should treat it as one."""

from __future__ import annotations

from mcp.types import CallToolResult, TextContent


def text_result(text: str, *, is_error: bool = False) -> CallToolResult:
    """A tool result with one text block."""
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error)
