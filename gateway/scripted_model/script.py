"""Scripts for the scripted model, and the pure logic that picks a reply for a request.

Tests and demos cannot reach the real Messages API, so they describe what "Claude"
should say as a script. Selection is deliberately *stateless* (the turn is the
number of assistant messages already in the request), so a harness that retries or
replays a request gets the same turn back. The only state kept here is the
per-turn attempt counter behind ``fail_first`` and the stream faults, which must live
across requests by its nature.

Tether's summarising requests get a script's ``compaction`` turn or a digest; the turn count
the digest carries keeps turn selection right after a compaction (see ``compaction``).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

import gateway.scripted_model.compaction as compaction
from gateway.scripted_model.cache import PromptCache
from gateway.scripted_model.spec import (
    ErrorSpec,
    Failure,
    RedactedThinkingSpec,
    Reply,
    Script,
    ScriptFile,
    StreamFault,
    TextSpec,
    ThinkingSpec,
    ToolUseSpec,
    Turn,
)

__all__ = [
    "WILDCARD",
    "ErrorSpec",
    "Failure",
    "Reply",
    "Script",
    "ScriptBook",
    "ScriptFile",
    "StreamFault",
    "Turn",
    "render_template",
    "validation_message",
]

WILDCARD = "*"
EXHAUSTED_TEXT = "(script exhausted)"
ECHO_TEXT = "You said: {{last_user_text}}"


def validation_message(error: ValidationError) -> str:
    """Flatten pydantic errors into ``field.path: problem`` lines that name the bad field."""
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(root)"
        parts.append(f"{location}: {item['msg']}")
    return "; ".join(parts)


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a plain string, or the text blocks of a list joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def _last_user(messages: list[Any]) -> Mapping[str, Any]:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return {}


def _tool_results_text(content: Any) -> str:
    if not isinstance(content, list):
        return ""
    results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
    return "\n".join(_text_of(result.get("content", "")) for result in results)


_TEMPLATE = re.compile(r"\{\{\s*(last_tool_result|last_user_text|conversation_digest|context_summary)\s*\}\}")


def render_template(text: str, messages: list[Any]) -> str:
    """Substitute ``{{last_tool_result}}`` and ``{{last_user_text}}`` from the last user message,
    ``{{conversation_digest}}`` and ``{{context_summary}}`` as ``compaction`` describes."""
    if "{{" not in text:
        return text
    last = _last_user(messages)
    values = {
        "last_tool_result": _tool_results_text(last.get("content")),
        "last_user_text": _text_of(last.get("content")),
        "conversation_digest": compaction.conversation_digest(messages),
        "context_summary": compaction.context_summary(messages),
    }
    return _TEMPLATE.sub(lambda m: values[m.group(1)], text)


def _render_value(value: Any, messages: list[Any]) -> Any:
    if isinstance(value, str):
        return render_template(value, messages)
    if isinstance(value, list):
        return [_render_value(item, messages) for item in value]
    if isinstance(value, dict):
        return {key: _render_value(item, messages) for key, item in value.items()}
    return value


def _render_block(
    block: TextSpec | ThinkingSpec | RedactedThinkingSpec | ToolUseSpec, messages: list[Any]
) -> dict[str, Any]:
    if isinstance(block, TextSpec):
        return {"type": "text", "text": render_template(block.text, messages)}
    if isinstance(block, ThinkingSpec):
        thinking = render_template(block.thinking, messages)
        signature = block.signature or "sig_" + hashlib.sha256(thinking.encode()).hexdigest()[:32]
        return {"type": "thinking", "thinking": thinking, "signature": signature}
    if isinstance(block, RedactedThinkingSpec):
        return {"type": "redacted_thinking", "data": block.data or "redacted_" + uuid.uuid4().hex}
    return {
        "type": "tool_use",
        "id": f"toolu_{uuid.uuid4().hex[:24]}",
        "name": block.name,
        "input": _render_value(block.input, messages),
    }


def _output_chars(content: list[dict[str, Any]]) -> int:
    total = 0
    for block in content:
        if block["type"] == "text":
            total += len(block["text"])
        elif block["type"] == "thinking":
            total += len(block["thinking"])
        elif block["type"] == "tool_use":
            total += len(json.dumps(block["input"]))
    return total


def _system_text(system: Any) -> str:
    return system if isinstance(system, str) else _text_of(system)


def _first_user_text(messages: list[Any]) -> str:
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


class ScriptBook:
    """Every loaded script plus the per-(script, turn) attempt counters and the prompt cache.

    Scripts are kept in the order added; later scripts shadow earlier ones so a test
    can override a shared script file without editing it.
    """

    def __init__(self, scripts: Iterable[Script] = ()) -> None:
        self._scripts: list[Script] = []
        self._attempts: dict[tuple[int, int], int] = {}
        self._cache = PromptCache()
        for script in scripts:
            self.add(script)

    @classmethod
    def from_json(cls, data: Any) -> ScriptBook:
        """Build from a parsed ``{"scripts": [...]}`` document (raises ``ValidationError``)."""
        return cls(ScriptFile.model_validate(data).scripts)

    @classmethod
    def load(cls, path: str | Path) -> ScriptBook:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    @property
    def scripts(self) -> list[Script]:
        return list(self._scripts)

    def add(self, script: Script) -> int:
        """Add a script (it takes priority over earlier ones) and return its index."""
        self._scripts.append(script)
        return len(self._scripts) - 1

    def select(self, request: Mapping[str, Any]) -> tuple[int, Script] | None:
        """The newest script matching the system prompt, else the first user message, else ``*``."""
        messages = request.get("messages") or []
        haystacks = [_system_text(request.get("system", "")), _first_user_text(messages)]
        newest_first = list(reversed(list(enumerate(self._scripts))))
        for haystack in haystacks:
            for index, script in newest_first:
                if script.match != WILDCARD and script.match in haystack:
                    return index, script
        for index, script in newest_first:
            if script.match == WILDCARD:
                return index, script
        return None

    def respond(self, request: Mapping[str, Any]) -> Reply | Failure:
        """Choose and render the reply for a validated Messages API request body.

        Counts an attempt at the turn as a side effect, so call it once per request.
        """
        messages: list[Any] = list(request.get("messages") or [])
        selected = self.select(request)
        summarising = compaction.is_compaction_request(request)
        if selected is None:
            echo = Turn(content=[TextSpec(type="text", text=compaction.DIGEST if summarising else ECHO_TEXT)])
            return _reply(echo, messages, self._cache.account(request))
        script_index, script = selected
        turn_index = compaction.TURN if summarising else compaction.turn_of(messages)
        if turn_index >= len(script.turns):
            exhausted = Turn(content=[TextSpec(type="text", text=EXHAUSTED_TEXT)])
            return _reply(exhausted, messages, self._cache.account(request))
        digest = Turn(content=[TextSpec(type="text", text=compaction.DIGEST)])
        turn = script.turns[turn_index] if turn_index >= 0 else script.compaction or digest
        attempt = self._attempts.get((script_index, turn_index), 0)
        self._attempts[(script_index, turn_index)] = attempt + 1
        if attempt < len(turn.fail_first):
            spec = turn.fail_first[attempt]
            return Failure(spec.status, spec.type, spec.message, spec.retry_after)
        reply = _reply(turn, messages, self._cache.account(request))
        return replace(reply, fault=_fault(turn, attempt - len(turn.fail_first)))


def _fault(turn: Turn, attempt: int) -> StreamFault | None:
    """The fault for the ``attempt``-th (0-based) attempt after the ``fail_first`` errors."""
    if turn.hang_after_events is not None and not turn.hang_first:
        return StreamFault("hang", turn.hang_after_events)
    phases: list[tuple[int, StreamFault]] = [
        (turn.hang_first, StreamFault("hang", turn.hang_after_events or 1)),
        (turn.truncate_first, StreamFault("truncate", turn.truncate_after_events)),
        (turn.malformed_tool_json_first, StreamFault("malformed_tool_json")),
        (turn.reset_first, StreamFault("reset", turn.reset_after_events)),
    ]
    for count, fault in phases:
        if attempt < count:
            return fault
        attempt -= count
    return None


def _reply(turn: Turn, messages: list[Any], input_usage: dict[str, int]) -> Reply:
    """``input_usage``: the prompt's tokens as the cache splits them (``PromptCache.account``)."""
    content = [_render_block(block, messages) for block in turn.content]
    has_tool_use = any(block["type"] == "tool_use" for block in content)
    usage = {**input_usage, "output_tokens": max(1, _output_chars(content) // 4)}
    if turn.usage is not None:
        usage.update(turn.usage.model_dump(exclude_none=True))
    return Reply(
        content=content,
        stop_reason=turn.stop_reason or ("tool_use" if has_tool_use else "end_turn"),
        usage=usage,
        hold=turn.hold,
    )
