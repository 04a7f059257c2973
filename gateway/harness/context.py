"""Rebuild the Messages API conversation from the session log.

Tool uses are keyed by their event ids in the log and sent under the model's own ids
(``tether_model_id``; logs from before it was kept fall back to the event id). Thinking blocks
are sent back exactly as the model sent them, before the text and tool uses of their reply,
in every turn: the API needs them unchanged within a tool-use turn and ignores or strips
those of finished turns, so sending them all is always valid; thinking never becomes text.

A tool use that never got a result (an interrupt, a restart) is answered with an error result
here, so the model never receives an orphaned ``tool_use``. User text that arrived while
tools were running is placed after their results, as the API requires, and user text that
arrived while the model was answering is placed after that answer (it is answered by the next call).
A ``system.message`` becomes a ``role: "system"`` message right after the input it came with,
and moves with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.sessionlog import outcomes
from gateway.sessionlog.events import MODEL_ID_FIELD, THINKING_BLOCK_FIELD
from gateway.sessionlog.transcript import RESULT_LINKS, TOOL_USE_KINDS, ToolCall, Transcript
from gateway.store.base import Body, StoredEvent

ABANDONED = "The tool call did not complete: it was interrupted before it returned a result."

Message = dict[str, Any]


class _Builder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.open_uses: list[str] = []
        self.closed: set[str] = set()
        self.wire_ids: dict[str, str] = {}
        """Tool-use event id -> the id the model gave that tool use."""
        self.deferred_user: list[tuple[str, dict[str, Any]]] = []
        """(role, block) of input waiting for open tool uses' results, which go first."""
        self.late_user: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        """(role, block) of input that arrived during a model request, by that request's end seq."""

    def settled_copy(self) -> _Builder:
        """A copy to resume from at a settled point: new lists (later adds append to them),
        shared blocks (never changed once built). Every use is closed there, and a result
        for a use not open is skipped anyway, so the use bookkeeping starts empty."""
        copy = _Builder()
        copy.messages = [{"role": m["role"], "content": list(m["content"])} for m in self.messages]
        return copy

    def add(self, role: str, block: dict[str, Any]) -> None:
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"].append(block)
        else:
            self.messages.append({"role": role, "content": [block]})

    def close_open_uses(self, recorded: dict[str, ToolCall] | None = None) -> None:
        """``recorded``: calls whose result the log holds later on (an interrupt's closing
        results, see ``interrupts``) are answered with it instead of a made-up one."""
        for use_id in self.open_uses:
            call = (recorded or {}).get(use_id)
            if call is not None and call.result is not None:
                content, is_error = call.result.get("content") or [], bool(call.result.get("is_error"))
            else:
                content, is_error = [{"type": "text", "text": ABANDONED}], True
            self.add("user", _result_block(self.wire_ids[use_id], content, is_error))
            self.closed.add(use_id)
        self.open_uses.clear()
        self.flush_user()

    def add_input(self, blocks: list[tuple[str, dict[str, Any]]]) -> None:
        """Input (user and system messages) goes after the results of open tool uses, which the
        API wants first."""
        if self.open_uses:
            self.deferred_user += blocks
        else:
            for role, block in blocks:
                self.add(role, block)

    def flush_user(self) -> None:
        for role, block in self.deferred_user:
            self.add(role, block)
        self.deferred_user.clear()


@dataclass
class _Checkpoint:
    """A builder saved where nothing later in the log can change what it built (see
    ``_settled``), with what it was built for."""

    key: tuple[int, Any, Any]
    seq: int
    builder: _Builder


MEMO_KEY = "context.checkpoint"


def build_messages(
    transcript: Transcript,
    tool_name: Callable[[Body], str],
    after_seq: int = 0,
    first: list[dict[str, Any]] | None = None,
    naming: Any = None,
) -> list[Message]:
    """``after_seq``/``first``: a compacted context is its summary (``first``, user content)
    followed by the events after the seq it summarises through (see ``compaction``).

    ``naming``: what ``tool_name`` depends on (the toolbox's name map). When given, the build
    resumes from the checkpoint the previous build left on the transcript, so a model call
    costs the events since then, not the whole log; the result is the same either way.
    """
    key = (after_seq, first, naming)
    checkpoint = transcript.memo.pop(MEMO_KEY, None) if naming is not None else None
    if isinstance(checkpoint, _Checkpoint) and checkpoint.key == key:
        builder, start = checkpoint.builder, checkpoint.seq
    else:
        builder, start = _Builder(), after_seq
        for block in first or []:
            builder.add("user", block)
        # A summary replaces the conversation, not the system messages: they hold for every
        # later turn, so those it covers follow it.
        for seq, content in transcript.system_messages:
            if seq <= after_seq:
                for block in content:
                    builder.add("system", _input_block(block))
        if after_seq and (definition := outcomes.open_through(transcript.events, after_seq)) is not None:
            builder.add("user", {"type": "text", "text": outcomes.work_request(definition)})
    for event in transcript.events_after(start):
        _fold(builder, transcript, event, tool_name)
    if naming is not None and _settled(builder, transcript):
        transcript.memo[MEMO_KEY] = _Checkpoint(key, transcript.last_seq, builder.settled_copy())
    builder.close_open_uses()
    return builder.messages


def _settled(builder: _Builder, transcript: Transcript) -> bool:
    """Nothing after this point can change what was built: no tool use is open (an interrupt
    would close it with a result logged later), no input waits for its place, and no model
    request is in flight (input during it would be placed after its reply)."""
    return (
        not builder.open_uses
        and not builder.deferred_user
        and not builder.late_user
        and not transcript.open_calls
        and transcript.open_model_request is None
    )


def _fold(
    builder: _Builder, transcript: Transcript, event: StoredEvent, tool_name: Callable[[Body], str]
) -> None:
    body, kind = event.body, event.type
    if kind in ("user.message", "system.message", "user.define_outcome"):
        if kind == "user.define_outcome":
            blocks = [("user", {"type": "text", "text": outcomes.work_request(body)})]
        else:
            role = "user" if kind == "user.message" else "system"
            blocks = [(role, _input_block(block)) for block in body["content"]]
        release = transcript.late_messages.get(event.seq)
        if release is not None:
            builder.late_user.setdefault(release, []).extend(blocks)
        else:
            builder.add_input(blocks)
    elif kind == "span.model_request_end":
        builder.add_input(builder.late_user.pop(event.seq, []))
    elif kind == "span.outcome_evaluation_end" and (feedback := outcomes.feedback(body)) is not None:
        builder.add_input([("user", {"type": "text", "text": feedback})])
    elif kind == "user.interrupt":
        builder.close_open_uses(transcript.calls)  # what it abandoned closes here, before what follows
    elif kind == "agent.thinking":
        if body.get(THINKING_BLOCK_FIELD) is None:
            return  # logged before blocks were kept: nothing to send back
        if not _same_turn(builder):
            builder.close_open_uses()
        builder.add("assistant", dict(body[THINKING_BLOCK_FIELD]))
    elif kind == "agent.message":
        if not _same_turn(builder):
            builder.close_open_uses()
        for block in body["content"]:
            if block["type"] == "text" and block["text"]:
                builder.add("assistant", {"type": "text", "text": block["text"]})
    elif kind in TOOL_USE_KINDS:
        if not _same_turn(builder):
            builder.close_open_uses()
        wire_id = builder.wire_ids[event.id] = body.get(MODEL_ID_FIELD) or event.id
        builder.add(
            "assistant",
            {"type": "tool_use", "id": wire_id, "name": tool_name(body), "input": body.get("input", {})},
        )
        builder.open_uses.append(event.id)
    elif kind in RESULT_LINKS:
        use_id = body[RESULT_LINKS[kind]]
        if use_id in builder.closed or use_id not in builder.open_uses:
            return
        content, is_error = body.get("content") or [], bool(body.get("is_error"))
        builder.add("user", _result_block(builder.wire_ids[use_id], content, is_error))
        builder.open_uses.remove(use_id)
        builder.closed.add(use_id)
        if not builder.open_uses:
            builder.flush_user()


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
    """Session content blocks already match Messages API blocks except for file sources, which
    stay references here (the log's view) and get their bytes when sent (``file_blocks``)."""
    if block["type"] in ("image", "document") and block["source"]["type"] == "file":
        return {**block, "source": {"type": "file", "file_id": block["source"]["file_id"]}}
    return {k: v for k, v in block.items() if v is not None}
