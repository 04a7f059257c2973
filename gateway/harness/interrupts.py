"""What an interrupt leaves in the log: a result for every tool use it abandoned.

``user.interrupt`` returns control to the user, so nothing it cut short may stay open: the
call that was running, the calls queued behind it, a call waiting for a confirmation and a
custom tool call waiting for the client's result each get an error result. Readers of the log
then see no dangling call, the model is told what happened, and a late answer to one of those
calls is refused (it already has its result).

The result of a custom tool use is a ``user.custom_tool_result``, the one result event the SDK
defines for it; here the gateway writes it on the client's behalf.
"""

from __future__ import annotations

from gateway.sessionlog import events as ev
from gateway.sessionlog.outcomes import interrupted_evaluation_end
from gateway.sessionlog.transcript import RESULT_TYPES, ToolCall, Transcript
from gateway.store.base import Body

INTERRUPTED = "The tool call was interrupted by the user before it finished."
UNCONFIRMED = "The tool call was interrupted before it was confirmed."
NO_CLIENT_RESULT = "The custom tool call was interrupted before the client sent its result."


def abandoned(transcript: Transcript) -> list[ToolCall]:
    """Tool uses older than the latest interrupt that still have no result, oldest first."""
    return [
        call
        for call in transcript.calls.values()
        if call.result is None and call.seq < transcript.last_interrupt_seq
    ]


def reason(call: ToolCall) -> str:
    if call.kind == "custom":
        return NO_CLIENT_RESULT
    if call.permission == "ask" and call.confirmation is None:
        return UNCONFIRMED
    return INTERRUPTED


def closing_results(transcript: Transcript) -> list[Body]:
    """An error result for each call the latest interrupt abandoned, and the end of an outcome
    evaluation it cut short (``interrupted``), so no span is left open either."""
    closing = []
    for call in abandoned(transcript):
        result_type, link = RESULT_TYPES[call.kind]
        closing.append(ev.text_result(result_type, link, call.id, reason(call), True))
    outcome = transcript.outcome
    if (
        outcome is not None
        and outcome.open_start is not None
        and outcome.open_start[1] < transcript.last_interrupt_seq
    ):
        closing.append(interrupted_evaluation_end(outcome))
    return closing
