"""An outcome's progress, folded from the session log like the rest of ``Transcript``.

``user.define_outcome`` starts it; each ``span.outcome_evaluation_start``/``_end`` pair is one
evaluation; an end saying ``needs_revision`` is new input for the agent (a revision request),
as is ``max_iterations_reached`` (one last acknowledgement turn). ``satisfied``, ``failed``,
``max_iterations_reached`` and ``interrupted`` end it. The session resource's
``outcome_evaluations`` entry is derived from this (``entry``), never kept on its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.sessionlog.events import new_event
from gateway.store.base import Body, StoredEvent

DEFAULT_MAX_ITERATIONS = 3
TERMINAL = frozenset({"satisfied", "max_iterations_reached", "failed", "interrupted"})
REVISION_INPUT = frozenset({"needs_revision", "max_iterations_reached"})
"""Verdicts the agent is told about (a revision request, or a last acknowledgement turn)."""


def work_request(definition: Body) -> str:
    """What the agent is told when an outcome is defined (the rubric is the grader's)."""
    return (
        "Work towards this outcome until it is met. When you finish, your work is evaluated "
        f"against a rubric, and you may be asked to revise it.\n\n{definition['description']}"
    )


def feedback(end: Body) -> str | None:
    """What the agent is told after an evaluation, if anything."""
    if end["result"] == "needs_revision":
        return (
            "An evaluation of your work found the outcome not met yet:\n\n"
            f"{end['explanation']}\n\nRevise your work accordingly."
        )
    if end["result"] == "max_iterations_reached":
        return (
            "The outcome is still not met and no further evaluation will run:\n\n"
            f"{end['explanation']}\n\nBriefly acknowledge where the work stands."
        )
    return None


def open_through(events: Iterable[StoredEvent], seq: int) -> Body | None:
    """The definition of the outcome still open after the events up to ``seq``, if any: what a
    compacted context must still tell the agent (the summary replaced the message saying it).
    Decided by those events alone, so a context rebuilt later says the same."""
    state: OutcomeState | None = None
    for event in events:
        if event.seq > seq:
            break
        if event.type == "user.define_outcome":
            state = OutcomeState(event.body, event.seq, input_seq=event.seq)
        elif state is None:
            continue
        elif event.type == "span.outcome_evaluation_start":
            state.started(event.id, event.seq)
        elif event.type == "span.outcome_evaluation_end":
            state.ended(event.body, event.seq)
        elif event.type == "user.interrupt":
            state.interrupted(event.body)
    return state.definition if state is not None and not state.done else None


def interrupted_evaluation_end(state: OutcomeState) -> Body:
    """The end of an evaluation an interrupt cut short."""
    assert state.open_start is not None
    return new_event(
        "span.outcome_evaluation_end",
        outcome_id=state.outcome_id,
        iteration=state.iteration,
        outcome_evaluation_start_id=state.open_start[0],
        result="interrupted",
        explanation="An interrupt arrived during the evaluation.",
        usage={
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    )


@dataclass
class OutcomeState:
    definition: Body
    """The ``user.define_outcome`` event."""
    seq: int
    input_seq: int
    """Seq of the newest input towards it: the definition, or the latest revision request."""
    iteration: int = 0
    open_start: tuple[str, int] | None = None
    """(id, seq) of an evaluation start with no end yet: running, or cut off by a crash."""
    last_end: Body | None = None
    result: str | None = None
    """The terminal result, once there is one."""
    completed_at: str | None = None

    @property
    def outcome_id(self) -> str:
        return str(self.definition["outcome_id"])

    @property
    def max_iterations(self) -> int:
        return int(self.definition.get("max_iterations") or DEFAULT_MAX_ITERATIONS)

    @property
    def done(self) -> bool:
        return self.result is not None

    def started(self, event_id: str, seq: int) -> None:
        self.open_start = (event_id, seq)

    def ended(self, body: Body, seq: int) -> bool:
        """Fold an evaluation's end; True when it is input the agent must answer."""
        self.open_start, self.last_end = None, body
        result = body["result"]
        if result == "needs_revision":
            self.iteration = int(body["iteration"]) + 1
        if result in TERMINAL:
            self.result, self.completed_at = result, body.get("processed_at")
        if result in REVISION_INPUT:
            self.input_seq = seq
            return True
        return False

    def interrupted(self, body: Body) -> None:
        """An interrupt while the agent works ends the outcome; one during an evaluation is
        recorded by that evaluation's end (the harness closes it as ``interrupted``)."""
        if not self.done and self.open_start is None:
            self.result, self.completed_at = "interrupted", body.get("processed_at")

    def entry(self, working: bool) -> dict[str, Any]:
        """The session's ``outcome_evaluations`` item (``working``: the agent has started)."""
        if self.result is not None:
            result = self.result
        elif self.open_start is not None:
            result = "evaluating"
        else:
            result = "running" if working else "pending"
        return {
            "type": "outcome_evaluation",
            "outcome_id": self.outcome_id,
            "description": self.definition["description"],
            "iteration": self.iteration,
            "result": result,
            "explanation": self.last_end.get("explanation") if self.last_end else None,
            "completed_at": self.completed_at,
        }
