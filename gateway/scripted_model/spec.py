"""The script format of the scripted model: what a test or demo says "Claude" should reply.

Pydantic models reject unknown keys, so a typo in a script fails loudly; the dataclasses are
what a chosen turn renders into (a reply, an HTTP failure, a stream fault).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class RedactedThinkingSpec(_Strict):
    """Thinking the API encrypted: opaque ``data`` (generated when omitted) to send back as is."""

    type: Literal["redacted_thinking"]
    data: str | None = Field(default=None, min_length=1)


class ToolUseSpec(_Strict):
    type: Literal["tool_use"]
    name: str = Field(min_length=1)
    input: dict[str, Any] = Field(default_factory=dict)


BlockSpec = Annotated[
    TextSpec | ThinkingSpec | RedactedThinkingSpec | ToolUseSpec, Field(discriminator="type")
]


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

    ``hold``: the reply waits until the test opens the gate of that name (see ``gates``).
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
    hold: str | None = Field(default=None, min_length=1)

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
    compaction: Turn | None = None
    """The reply to a summarising request (default: ``{{conversation_digest}}``)."""


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
    hold: str | None = None
