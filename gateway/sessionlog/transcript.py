"""A session's state, derived from its log and nothing else.

Because every decision the harness makes is recomputed from the persisted
events, any gateway process can pick a session up where another left off. A transcript is
built once and then *extended* with the events appended since (``extend``), so a harness
step costs what is new, not the whole log: all derived state is folded event by event.

Input counts as answered only by a model request whose context included it: each
``span.model_request_start`` records the last seq its request was built from
(``CONTEXT_SEQ_FIELD``), so a message that arrives while the model is answering is still
unanswered when that answer ends, and gets a model call of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.sessionlog.outcomes import OutcomeState
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
CONTEXT_SEQ_FIELD = "tether_context_seq"
"""Extra field on ``span.model_request_start``: the newest seq the request's context holds."""
COMPACTION_FIELD = "tether_compaction"
"""Extra field on the ``span.model_request_*`` pair of a summarising call (``compaction``):
it answers no input and its usage is not the size of the context."""

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
    open_calls: dict[str, ToolCall] = field(default_factory=dict)
    """The calls with no result yet, in order: what a step looks at, however long the log."""
    last_input_seq: int = 0
    answered_through_seq: int = 0
    """The context seq of the newest successful model request: input up to here was seen."""
    last_interrupt_seq: int = 0
    previous_interrupt_seq: int = 0
    last_idle: Body | None = None
    last_status_seq: int = 0
    """Seq of the newest status event (0: none yet)."""
    outcome: OutcomeState | None = None
    """The newest outcome defined (``user.define_outcome``), and how far it got."""
    status: str = "idle"
    open_model_request: str | None = None
    """A ``span.model_request_start`` with no end yet: a call in flight, or lost in a crash."""
    open_request_context_seq: int = 0
    """The newest seq the open model request's context was built from (one is open at a time)."""
    system_messages: list[tuple[int, list[Body]]] = field(default_factory=list)
    """(seq, content) of every ``system.message``: they hold for all later turns, compaction too."""
    late_messages: dict[int, int] = field(default_factory=dict)
    """``user.message`` (or ``system.message``) seq -> seq of the end of the model request it arrived during: the
    conversation places it after that request's reply, which never saw it."""
    _recent_messages: list[int] = field(default_factory=list)
    compacted: Body | None = None
    """The newest ``agent.thread_context_compacted``: the context resumes from its summary."""
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Work derived from this transcript that upper layers keep with it (the conversation
    builder's checkpoint), so it lives and dies with the cached transcript."""

    def events_after(self, seq: int) -> Sequence[StoredEvent]:
        """The events past ``seq``, without scanning those before (seqs are contiguous)."""
        if not self.events:
            return []
        return self.events[max(0, seq - self.events[0].seq + 1) :]

    @classmethod
    def from_events(cls, events: Sequence[StoredEvent]) -> Transcript:
        transcript = cls(events=[])
        transcript.extend(events)
        return transcript

    def extend(self, events: Sequence[StoredEvent]) -> None:
        """Fold events appended after ``last_seq``; a gap or an overlap is a caller's bug."""
        for event in events:
            if self.events and event.seq != self.last_seq + 1:
                raise ValueError(f"event seq {event.seq} does not follow {self.last_seq}")
            self.events.append(event)
            self._fold(event)

    def _fold(self, event: StoredEvent) -> None:
        body, kind = event.body, event.type
        if kind in TOOL_USE_KINDS:
            self.calls[event.id] = self.open_calls[event.id] = ToolCall(use=body, seq=event.seq)
        elif kind in RESULT_LINKS:
            call = self.calls.get(body[RESULT_LINKS[kind]])
            if call is not None and call.result is None:
                call.result = body
                del self.open_calls[call.id]
            # A result closing a call an interrupt abandoned is bookkeeping, not new input.
            if call is None or call.seq > self.last_interrupt_seq:
                self.last_input_seq = event.seq
        elif kind == "user.tool_confirmation":
            call = self.calls.get(body["tool_use_id"])
            if call is not None and call.confirmation is None:
                call.confirmation = body
        elif kind == "user.message":
            self.last_input_seq = event.seq
            self._recent_messages.append(event.seq)
        elif kind == "user.define_outcome":
            self.last_input_seq = event.seq
            self._recent_messages.append(event.seq)
            self.outcome = OutcomeState(body, event.seq, input_seq=event.seq)
        elif kind == "span.outcome_evaluation_start" and self.outcome is not None:
            self.outcome.started(event.id, event.seq)
        elif kind == "span.outcome_evaluation_end" and self.outcome is not None:
            if self.outcome.ended(body, event.seq):
                self.last_input_seq = event.seq
        elif kind == "system.message":
            # Not input of its own: it accompanies the input just before it, and moves with it.
            self._recent_messages.append(event.seq)
            self.system_messages.append((event.seq, body["content"]))
        elif kind == "user.interrupt":
            self.previous_interrupt_seq, self.last_interrupt_seq = self.last_interrupt_seq, event.seq
            if self.outcome is not None:
                self.outcome.interrupted(body)
        elif kind == "span.model_request_start":
            self.open_model_request = event.id
            context_seq = body.get(CONTEXT_SEQ_FIELD)
            self.open_request_context_seq = context_seq if isinstance(context_seq, int) else event.seq - 1
        elif kind == "span.model_request_end" and body.get(COMPACTION_FIELD):
            self.open_model_request = None  # a summary: no input answered (see ``compaction``)
        elif kind == "agent.thread_context_compacted":
            self.compacted = body
        elif kind == "span.model_request_end":
            start, self.open_model_request = self.open_model_request, None
            if not body.get("is_error"):
                ended_open = start is not None and body.get("model_request_start_id") == start
                context_seq = self.open_request_context_seq if ended_open else event.seq
                self.answered_through_seq = max(self.answered_through_seq, context_seq)
                for seq in self._recent_messages:
                    if seq > context_seq:
                        self.late_messages[seq] = event.seq
                self._recent_messages.clear()
        if kind in STATUS_EVENTS:
            self.status = STATUS_EVENTS[kind]
            self.last_idle = body if kind == "session.status_idle" else None
            self.last_status_seq = event.seq

    @property
    def last_seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def pending(self) -> list[ToolCall]:
        """Tool uses with no result that an interrupt has not abandoned, oldest first."""
        return [call for call in self.open_calls.values() if call.seq > self.last_interrupt_seq]

    def abandoned_by_last_interrupt(self) -> list[ToolCall]:
        """Server-side tool uses the latest interrupt left without a result."""
        return [
            call
            for call in self.open_calls.values()
            if call.kind != "custom" and self.previous_interrupt_seq < call.seq < self.last_interrupt_seq
        ]

    def awaiting_client(self) -> list[ToolCall]:
        return [call for call in self.pending() if call.awaits_client]

    def needs_evaluation(self) -> bool:
        """The agent finished a turn of work on an open outcome (or an evaluation was cut off):
        the grader decides what comes next."""
        outcome = self.outcome
        if outcome is None or outcome.done:
            return False
        if outcome.open_start is not None:
            return True
        return (
            self.answered_through_seq >= outcome.input_seq
            and self.open_model_request is None
            and not self.needs_model()
            and not self.pending()
        )

    def outcome_entry(self) -> dict[str, Any] | None:
        outcome = self.outcome
        if outcome is None:
            return None
        working = self.status == "running" or self.answered_through_seq >= outcome.seq
        return outcome.entry(working=working)

    def needs_model(self) -> bool:
        """Input no model request has seen exists, nothing is pending, and no interrupt has
        dropped it."""
        return not self.pending() and self.last_input_seq > max(
            self.answered_through_seq, self.last_interrupt_seq
        )
