"""The scripted model checks thinking that is sent back as strictly as the Messages API does.

The API wants each thinking block returned unchanged (its signature proves that), and with
thinking on, the assistant message of an unfinished tool-use turn must open with the thinking
that came before its tool use. A stand-in that accepted anything would let a harness that drops
or rewrites thinking pass its tests, so this ledger remembers what was served and rejects what
the API would. It lives as long as the server process, like the attempt counters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ThinkingLedger"]

THINKING_TYPES = ("thinking", "redacted_thinking")
DOCS = "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"


class ThinkingLedger:
    """Every thinking block served, and the thinking served before each tool use."""

    def __init__(self) -> None:
        self._signatures: dict[str, str] = {}
        """signature -> the thinking text it was issued for."""
        self._redacted: set[str] = set()
        self._before_tool_use: dict[str, list[dict[str, Any]]] = {}
        """tool use id -> the thinking blocks that opened the reply it was served in."""

    def record(self, content: list[dict[str, Any]]) -> None:
        """Remember a reply that is being served."""
        thinking: list[dict[str, Any]] = []
        for block in content:
            if block["type"] == "thinking":
                self._signatures[block["signature"]] = block["thinking"]
                thinking.append(block)
            elif block["type"] == "redacted_thinking":
                self._redacted.add(block["data"])
                thinking.append(block)
            elif block["type"] == "tool_use":
                self._before_tool_use[block["id"]] = list(thinking)

    def problem(self, request: Mapping[str, Any]) -> str | None:
        """Why the API would reject ``request``'s thinking (config or blocks), or ``None``."""
        messages = [m for m in request.get("messages") or [] if isinstance(m, dict)]
        return (
            _config_problem(request)
            or self._block_problem(messages)
            or self._continuation_problem(request.get("thinking"), messages)
        )

    def _block_problem(self, messages: list[dict[str, Any]]) -> str | None:
        for i, message in enumerate(messages):
            content = message.get("content")
            if message.get("role") != "assistant" or not isinstance(content, list):
                continue
            for j, block in enumerate(content):
                if not isinstance(block, dict):
                    continue
                where = f"messages.{i}.content.{j}"
                if block.get("type") == "thinking":
                    issued_for = self._signatures.get(str(block.get("signature")))
                    if issued_for is None or issued_for != block.get("thinking"):
                        return f"{where}: Invalid `signature` in `thinking` block"
                elif block.get("type") == "redacted_thinking" and block.get("data") not in self._redacted:
                    return f"{where}: Invalid `data` in `redacted_thinking` block"
        return None

    def _continuation_problem(self, thinking: Any, messages: list[dict[str, Any]]) -> str | None:
        """With thinking on, the last assistant message, if it used tools, opens with its thinking."""
        if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive"):
            return None
        assistant = [i for i, message in enumerate(messages) if message.get("role") == "assistant"]
        if not assistant or not isinstance(messages[assistant[-1]].get("content"), list):
            return None
        index = assistant[-1]
        content = [b for b in messages[index]["content"] if isinstance(b, dict)]
        uses = [b for b in content if b.get("type") == "tool_use"]
        if not uses:
            return None
        served = self._before_tool_use.get(str(uses[0].get("id")))
        if served == []:
            return None  # the model did not think before this tool use
        if not content or content[0].get("type") not in THINKING_TYPES:
            found = content[0].get("type") if content else "nothing"
            return (
                f"messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{found}`. When `thinking` is enabled, a final `assistant` message must start with a "
                "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). "
                "We recommend you include thinking blocks from previous turns. To avoid this "
                f"requirement, disable `thinking`. Please consult our documentation at {DOCS}"
            )
        if served is not None and content[: len(served)] != served:
            return (
                f"messages.{index}.content: the thinking blocks served before tool use "
                f"{uses[0].get('id')} must open this message unchanged and in their order"
            )
        return None


def _config_problem(request: Mapping[str, Any]) -> str | None:
    thinking = request.get("thinking")
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "adaptive", "disabled"):
        return "thinking.type: Input should be 'enabled', 'adaptive' or 'disabled'"
    if thinking["type"] != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if request["max_tokens"] <= budget:
        return (
            "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our "
            f"documentation at {DOCS}#max-tokens-and-context-window-size"
        )
    return None
