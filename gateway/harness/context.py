"""Rebuild the Messages API conversation from the session log.

Tool uses are keyed by their event ids. A tool use that never got a result (an
interrupt, a restart) is answered with an error result here, so the model never
receives an orphaned ``tool_use``. User text that arrived while tools were running
is placed after their results, as the API requires.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.harness.transcript import RESULT_LINKS, TOOL_USE_KINDS, Transcript
from gateway.store.base import Body

ABANDONED = "The tool call did not complete: it was interrupted before it returned a result."

Message = dict[str, Any]


class _Builder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.open_uses: list[str] = []
        self.closed: set[str] = set()
        self.deferred_user: list[dict[str, Any]] = []

    def add(self, role: str, block: dict[str, Any]) -> None:
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].append(block)
        else:
            self.messages.append({"role": role, "content": [block]})

    def close_open_uses(self) -> None:
        for use_id in self.open_uses:
            self.add("user", _result_block(use_id, [{"type": "text", "text": ABANDONED}], True))
            self.closed.add(use_id)
        self.open_uses.clear()
        self.flush_user()

    def flush_user(self) -> None:
        for block in self.deferred_user:
            self.add("user", block)
        self.deferred_user.clear()


def build_messages(transcript: Transcript, tool_name: Callable[[Body], str]) -> list[Message]:
    builder = _Builder()
    for event in transcript.events:
        body, kind = event.body, event.type
        if kind == "user.message":
            blocks = [_input_block(block) for block in body["content"]]
            if builder.open_uses:
                builder.deferred_user += blocks
            else:
                for block in blocks:
                    builder.add("user", block)
        elif kind == "agent.message":
            if not _same_turn(builder):
                builder.close_open_uses()
            for block in body["content"]:
                if block["type"] == "text" and block["text"]:
                    builder.add("assistant", {"type": "text", "text": block["text"]})
        elif kind in TOOL_USE_KINDS:
            if not _same_turn(builder):
                builder.close_open_uses()
            builder.add(
                "assistant",
                {"type": "tool_use", "id": event.id, "name": tool_name(body), "input": body.get("input", {})},
            )
            builder.open_uses.append(event.id)
        elif kind in RESULT_LINKS:
            use_id = body[RESULT_LINKS[kind]]
            if use_id in builder.closed or use_id not in builder.open_uses:
                continue
            builder.add("user", _result_block(use_id, body.get("content") or [], bool(body.get("is_error"))))
            builder.open_uses.remove(use_id)
            builder.closed.add(use_id)
            if not builder.open_uses:
                builder.flush_user()
    builder.close_open_uses()
    return builder.messages


def _same_turn(builder: _Builder) -> bool:
    """True while the assistant message being built has no results yet (one model response)."""
    return bool(builder.messages) and builder.messages[-1]["role"] == "assistant"


def _result_block(use_id: str, content: list[dict[str, Any]], is_error: bool) -> dict[str, Any]:
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": use_id,
        "content": [_input_block(b) for b in content] or [{"type": "text", "text": "(no output)"}],
    }
    if is_error:
        block["is_error"] = True
    return block


def _input_block(block: dict[str, Any]) -> dict[str, Any]:
    """Session content blocks already match Messages API blocks except for file sources."""
    if block["type"] in ("image", "document") and block["source"]["type"] == "file":
        return {**block, "source": {"type": "file", "file_id": block["source"]["file_id"]}}
    return {k: v for k, v in block.items() if v is not None}
