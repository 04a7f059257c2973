"""A session's state, derived from its log and nothing else.

Because every decision the harness makes is recomputed from the persisted
events, any gateway process can pick a session up where another left off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.store.base import Body, StoredEvent

ToolKind = Literal["agent", "mcp", "custom"]

TOOL_USE_KINDS: dict[str, ToolKind] = {
    "agent.tool_use": "agent",
    "agent.mcp_tool_use": "mcp",
    "agent.custom_tool_use": "custom",
}
RESULT_LINKS = {
    "agent.tool_result": "tool_use_id",
    "agent.mcp_tool_result": "mcp_tool_use_id",
    "user.custom_tool_result": "custom_tool_use_id",
}
RESULT_TYPES: dict[ToolKind, tuple[str, str]] = {
    "agent": ("agent.tool_result", "tool_use_id"),
    "mcp": ("agent.mcp_tool_result", "mcp_tool_use_id"),
    "custom": ("user.custom_tool_result", "custom_tool_use_id"),
}
STATUS_EVENTS = {
    "session.status_running": "running",
    "session.status_idle": "idle",
    "session.status_rescheduled": "rescheduling",
    "session.status_terminated": "terminated",
}


@dataclass
class ToolCall:
    use: Body
    seq: int
    result: Body | None = None
    confirmation: Body | None = None

    @property
    def id(self) -> str:
        return str(self.use["id"])

    @property
    def kind(self) -> ToolKind:
        return TOOL_USE_KINDS[self.use["type"]]

    @property
    def permission(self) -> str:
        return str(self.use.get("evaluated_permission") or "allow")

    @property
    def awaits_client(self) -> bool:
        """Blocked on the client: a custom tool's result, or a confirmation for an ``ask``."""
        if self.kind == "custom":
            return True
        return self.permission == "ask" and self.confirmation is None


@dataclass
class Transcript:
    events: list[StoredEvent]
    calls: dict[str, ToolCall] = field(default_factory=dict)
    last_input_seq: int = 0
    last_model_end_seq: int = 0
    last_interrupt_seq: int = 0
    previous_interrupt_seq: int = 0
    last_idle: Body | None = None
    status: str = "idle"
    open_model_request: str | None = None
    """A ``span.model_request_start`` with no end yet: a call in flight, or lost in a crash."""

    @classmethod
    def from_events(cls, events: Sequence[StoredEvent]) -> Transcript:
        transcript = cls(events=list(events))
        for event in events:
            transcript._fold(event)
        return transcript

    def _fold(self, event: StoredEvent) -> None:
        body, kind = event.body, event.type
        if kind in TOOL_USE_KINDS:
            self.calls[event.id] = ToolCall(use=body, seq=event.seq)
        elif kind in RESULT_LINKS:
            call = self.calls.get(body[RESULT_LINKS[kind]])
            if call is not None and call.result is None:
                call.result = body
            # A result closing a call an interrupt abandoned is bookkeeping, not new input.
            if call is None or call.seq > self.last_interrupt_seq:
                self.last_input_seq = event.seq
        elif kind == "user.tool_confirmation":
            call = self.calls.get(body["tool_use_id"])
            if call is not None and call.confirmation is None:
                call.confirmation = body
        elif kind == "user.message":
            self.last_input_seq = event.seq
        elif kind == "user.interrupt":
            self.previous_interrupt_seq, self.last_interrupt_seq = self.last_interrupt_seq, event.seq
        elif kind == "span.model_request_start":
            self.open_model_request = event.id
        elif kind == "span.model_request_end":
            self.open_model_request = None
            if not body.get("is_error"):
                self.last_model_end_seq = event.seq
        if kind in STATUS_EVENTS:
            self.status = STATUS_EVENTS[kind]
            self.last_idle = body if kind == "session.status_idle" else None

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def pending(self) -> list[ToolCall]:
        """Tool uses with no result that an interrupt has not abandoned, oldest first."""
        return [
            call for call in self.calls.values() if call.result is None and call.seq > self.last_interrupt_seq
        ]

    def abandoned_by_last_interrupt(self) -> list[ToolCall]:
        """Server-side tool uses the latest interrupt left without a result."""
        return [
            call
            for call in self.calls.values()
            if call.result is None
            and call.kind != "custom"
            and self.previous_interrupt_seq < call.seq < self.last_interrupt_seq
        ]

    def awaiting_client(self) -> list[ToolCall]:
        return [call for call in self.pending() if call.awaits_client]

    def needs_model(self) -> bool:
        """Unanswered input exists, nothing is pending, and no interrupt has dropped it."""
        return not self.pending() and self.last_input_seq > max(
            self.last_model_end_seq, self.last_interrupt_seq
        )
