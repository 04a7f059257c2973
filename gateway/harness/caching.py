"""Prompt-cache breakpoints on a built Messages API request.

Every model call of a session resends the whole conversation, so without caching a long
session pays for its history again on each call. The API caches the prefix of a request
up to each block marked ``cache_control`` and bills a later request whose prefix matches at
a tenth of the input price. The marks are placed as a pass over the finished request (the
conversation builder knows nothing of them):

- the last tool and the last system block: the agent's stable prefix;
- the last block of the last message: a rolling mark that the next call reads back;
- the last block of the previous user message: where the previous call put its rolling
  mark, so the next call of the same turn, and the first of the next turn, hit it exactly.

At most four marks (the API refuses more), never on an empty text or a thinking block (the
API refuses those too): the nearest earlier block that allows one takes the mark instead.
"""

from __future__ import annotations

from typing import Any

EPHEMERAL = {"type": "ephemeral"}
MAX_BREAKPOINTS = 4
MARK = "cache_control"

Block = dict[str, Any]


def prepared(request: dict[str, Any], enabled: bool) -> dict[str, Any]:
    """The request to send: with breakpoints when caching is on, with none at all when off."""
    return with_cache_breakpoints(request) if enabled else without_cache_breakpoints(request)


def without_cache_breakpoints(request: dict[str, Any]) -> dict[str, Any]:
    """A copy with every ``cache_control`` mark removed; the input is not changed."""
    out = dict(request)
    if isinstance(out.get("tools"), list):
        out["tools"] = [_unmarked(tool) for tool in out["tools"]]
    if isinstance(out.get("system"), list):
        out["system"] = [_unmarked(block) for block in out["system"]]
    out["messages"] = [_unmarked_message(message) for message in out.get("messages") or []]
    return out


Slot = tuple[list[Any], int]
"""Where a block sits: its list and index. A mark replaces the block with a marked copy, so
the request given in (and anything it shares blocks with) is never changed."""


def with_cache_breakpoints(request: dict[str, Any]) -> dict[str, Any]:
    """A copy with the breakpoints placed (any marks already present are replaced)."""
    out = without_cache_breakpoints(request)
    slots: list[Slot] = []
    tools = out.get("tools")
    if tools:
        slots.append((tools, len(tools) - 1))
    system = out.get("system")
    if isinstance(system, str) and system.strip():
        system = out["system"] = [{"type": "text", "text": system}]
    if isinstance(system, list):
        index = _last_allowed(system)
        if index is not None:
            slots.append((system, index))
    messages: list[dict[str, Any]] = out["messages"]
    for message in messages:
        if isinstance(message.get("content"), str):
            text = message["content"]
            message["content"] = [{"type": "text", "text": text}] if text.strip() else []
    owned: set[int] = set()
    previous_user = _previous_user(messages)
    if previous_user is not None:
        slots += _rolling(messages, previous_user, owned)
    if messages:
        slots += _rolling(messages, len(messages) - 1, owned)
    placed: list[Slot] = []
    for container, index in slots:
        if not any(container is seen and index == at for seen, at in placed):
            placed.append((container, index))
    for container, index in placed[-MAX_BREAKPOINTS:]:
        container[index] = {**container[index], MARK: dict(EPHEMERAL)}
    return out


def allows_mark(block: Block) -> bool:
    """Whether the API accepts ``cache_control`` on this block."""
    kind = block.get("type")
    if kind in ("thinking", "redacted_thinking"):
        return False
    if kind == "text":
        text = block.get("text")
        return isinstance(text, str) and bool(text.strip())
    return True


def _unmarked(block: Any) -> Any:
    """The block itself when it carries no mark (the usual case: no copy), else a copy without."""
    if not isinstance(block, dict):
        return block
    inner = block.get("content") if block.get("type") == "tool_result" else None
    inner_marked = isinstance(inner, list) and any(isinstance(b, dict) and MARK in b for b in inner)
    if MARK not in block and not inner_marked:
        return block
    copy = {key: value for key, value in block.items() if key != MARK}
    if inner_marked:
        copy["content"] = [_unmarked(item) for item in copy["content"]]
    return copy


def _unmarked_message(message: dict[str, Any]) -> dict[str, Any]:
    """The message itself when no block in it is marked (no copy: a long conversation is
    mostly such messages), else a copy without the marks."""
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    blocks = [_unmarked(block) for block in content]
    if all(new is old for new, old in zip(blocks, content, strict=True)):
        return message
    return {**message, "content": blocks}


def _last_allowed(blocks: list[Any]) -> int | None:
    for index in range(len(blocks) - 1, -1, -1):
        block = blocks[index]
        if isinstance(block, dict) and allows_mark(block):
            return index
    return None


def _rolling(messages: list[dict[str, Any]], index: int, owned: set[int]) -> list[Slot]:
    """The last block at or before message ``index`` that allows a mark (none if none does).
    That message is copied once (with its content list), so the input's stays unmarked."""
    for at_message in range(index, -1, -1):
        at = _last_allowed(messages[at_message]["content"])
        if at is not None:
            if at_message not in owned:
                owned.add(at_message)
                message = messages[at_message]
                messages[at_message] = {**message, "content": list(message["content"])}
            return [(messages[at_message]["content"], at)]
    return []


def _previous_user(messages: list[dict[str, Any]]) -> int | None:
    """The index of the last input (user or system message) before the last message."""
    for index in range(len(messages) - 2, -1, -1):
        if messages[index].get("role") in ("user", "system"):
            return index
    return None
