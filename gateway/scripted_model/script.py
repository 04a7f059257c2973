"""Scripts for the scripted model, and the pure logic that picks a reply for a request.

Tests and demos cannot reach the real Messages API, so they describe what "Claude"
should say as a script. Selection is deliberately *stateless* (the turn is the
number of assistant messages already in the request), so a harness that retries or
replays a request gets the same turn back. The only state kept here is the
per-turn attempt counter behind ``fail_first`` and the stream faults, which must live
across requests by its nature.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


class _Strict(BaseModel):
    """Unknown keys are rejected so a typo in a script fails loudly instead of being ignored."""

    model_config = ConfigDict(extra="forbid")


class TextSpec(_Strict):
    type: Literal["text"]
    text: str


class ThinkingSpec(_Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class ToolUseSpec(_Strict):
    type: Literal["tool_use"]
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


BlockSpec = Annotated[TextSpec | ThinkingSpec | ToolUseSpec, Field(discriminator="type")]


class ErrorSpec(_Strict):
    """One scripted HTTP failure, returned with an Anthropic-style error body."""

    status: int = Field(ge=400, le=599)
    type: str = Field(min_length=1)
    message: str = ""
    retry_after: float | None = Field(default=None, ge=0)


class UsageSpec(_Strict):
    """Overrides for the computed usage; omitted fields keep the computed value."""

    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    cache_creation_input_tokens: int | None = Field(default=None, ge=0)
    cache_read_input_tokens: int | None = Field(default=None, ge=0)


class Turn(_Strict):
    """One assistant reply, and the failures served before it succeeds.

    Each attempt at the turn (a request for it, counted across requests) gets the next
    failure in this order, then the reply itself:

    - ``fail_first``: one HTTP error response per entry.
    - ``hang_first`` attempts: the stream stops after ``hang_after_events`` SSE events (default
      1) and never continues, so the client times out. ``hang_after_events`` without
      ``hang_first`` makes every attempt hang.
    - ``truncate_first`` attempts: the stream ends cleanly (HTTP-wise) after
      ``truncate_after_events`` SSE events, without ``message_delta`` and ``message_stop``
      (default: right before ``message_delta``, so every block is there but the message
      never finishes).
    - ``malformed_tool_json_first`` attempts: every ``tool_use`` block's ``input_json_delta``
      fragments form broken JSON; the message itself completes. Needs a ``tool_use`` block.
    - ``reset_first`` attempts: the connection is dropped after ``reset_after_events`` SSE
      events (default: right before ``message_delta``) without finishing the chunked body,
      so the client sees a protocol error.

    Stream faults apply to streamed requests; a non-streamed request gets the whole message.
    """

    content: list[BlockSpec] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    usage: UsageSpec | None = None
    fail_first: list[ErrorSpec] = Field(default_factory=list)
    hang_after_events: int | None = Field(default=None, ge=0)
    hang_first: int = Field(default=0, ge=0)
    truncate_first: int = Field(default=0, ge=0)
    truncate_after_events: int | None = Field(default=None, ge=0)
    malformed_tool_json_first: int = Field(default=0, ge=0)
    reset_first: int = Field(default=0, ge=0)
    reset_after_events: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _faults_have_effect(self) -> Turn:
        if self.truncate_after_events is not None and not self.truncate_first:
            raise ValueError("truncate_after_events needs truncate_first (how many attempts to truncate)")
        if self.reset_after_events is not None and not self.reset_first:
            raise ValueError("reset_after_events needs reset_first (how many attempts to reset)")
        if self.malformed_tool_json_first and not any(isinstance(b, ToolUseSpec) for b in self.content):
            raise ValueError("malformed_tool_json_first needs a tool_use block in content")
        return self


class Script(_Strict):
    """Turns replayed for every request whose system prompt or first user message contains ``match``."""

    match: str = Field(min_length=1)
    turns: list[Turn]


class ScriptFile(_Strict):
    scripts: list[Script] = Field(default_factory=list)


@dataclass(frozen=True)
class Failure:
    """A scripted HTTP error to return instead of a message."""

    status: int
    type: str
    message: str
    retry_after: float | None = None


FaultKind = Literal["hang", "truncate", "malformed_tool_json", "reset"]


@dataclass(frozen=True)
class StreamFault:
    """How one streamed attempt goes wrong (see ``Turn``). ``after_events`` counts SSE events
    sent before the fault; ``None`` means right before ``message_delta``."""

    kind: FaultKind
    after_events: int | None = None


@dataclass(frozen=True)
class Reply:
    """A fully rendered assistant message; ``content`` holds API-shaped blocks."""

    content: list[dict[str, Any]]
    stop_reason: str
    usage: dict[str, int]
    fault: StreamFault | None = None


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


_TEMPLATE = re.compile(r"\{\{\s*(last_tool_result|last_user_text)\s*\}\}")


def render_template(text: str, messages: list[Any]) -> str:
    """Substitute ``{{last_tool_result}}`` and ``{{last_user_text}}`` from the last user message."""
    if "{{" not in text:
        return text
    last = _last_user(messages)
    values = {
        "last_tool_result": _tool_results_text(last.get("content")),
        "last_user_text": _text_of(last.get("content")),
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


def _render_block(block: TextSpec | ThinkingSpec | ToolUseSpec, messages: list[Any]) -> dict[str, Any]:
    if isinstance(block, TextSpec):
        return {"type": "text", "text": render_template(block.text, messages)}
    if isinstance(block, ThinkingSpec):
        thinking = render_template(block.thinking, messages)
        signature = block.signature or "sig_" + hashlib.sha256(thinking.encode()).hexdigest()[:32]
        return {"type": "thinking", "thinking": thinking, "signature": signature}
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
    """Every loaded script plus the per-(script, turn) attempt counters.

    Scripts are kept in the order added; later scripts shadow earlier ones so a test
    can override a shared script file without editing it.
    """

    def __init__(self, scripts: Iterable[Script] = ()) -> None:
        self._scripts: list[Script] = []
        self._attempts: dict[tuple[int, int], int] = {}
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
        if selected is None:
            return _reply(Turn(content=[TextSpec(type="text", text=ECHO_TEXT)]), messages)
        script_index, script = selected
        turn_index = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        if turn_index >= len(script.turns):
            return _reply(Turn(content=[TextSpec(type="text", text=EXHAUSTED_TEXT)]), messages)
        turn = script.turns[turn_index]
        attempt = self._attempts.get((script_index, turn_index), 0)
        self._attempts[(script_index, turn_index)] = attempt + 1
        if attempt < len(turn.fail_first):
            spec = turn.fail_first[attempt]
            return Failure(spec.status, spec.type, spec.message, spec.retry_after)
        return replace(_reply(turn, messages), fault=_fault(turn, attempt - len(turn.fail_first)))


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


def _reply(turn: Turn, messages: list[Any]) -> Reply:
    content = [_render_block(block, messages) for block in turn.content]
    has_tool_use = any(block["type"] == "tool_use" for block in content)
    usage = {
        "input_tokens": max(1, len(json.dumps(messages)) // 4),
        "output_tokens": max(1, _output_chars(content) // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }
    if turn.usage is not None:
        usage.update(turn.usage.model_dump(exclude_none=True))
    return Reply(
        content=content,
        stop_reason=turn.stop_reason or ("tool_use" if has_tool_use else "end_turn"),
        usage=usage,
    )
