"""Previews of events still being produced: ``event_start`` and ``event_delta`` for streams
that ask for them with ``event_deltas``.

While the model streams a reply, the harness announces the ``agent.message`` and
``agent.thinking`` events it will append, under the ids they will carry, and streams each
message's text as ``content_delta`` fragments. Previews never enter the log: the buffered
event that follows carries the complete content, and a model request that ends early
produces none (its ``span.model_request_end`` closes the preview), as the SDK documents.

Previews are best-effort and in-process: only the gateway process running the session's
harness publishes them, so a stream connected to another process (or one that falls too far
behind) sees the buffered events alone. Each preview is anchored at the seq of its
``span.model_request_start``, so a stream can place it between the right log events.

A running MCP tool call's progress is previewed too, as Tether's own ``TOOL_PROGRESS`` kind
(published by ``harness.tool_progress``, anchored at the tool use's seq).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from gateway import ids
from gateway.store.base import Body

log = logging.getLogger("tether.previews")

PREVIEWABLE = frozenset({"agent.message", "agent.thinking"})
"""The SDK's ``BetaManagedAgentsDeltaType``."""
TOOL_PROGRESS = "tether.tool_progress"
"""Tether's own preview kind (``harness.tool_progress``): a running tool call's latest
``notifications/progress``. The SDK has no type for it, so a stream asks for it by this name
and its frames carry no SSE ``event:`` line, which the SDK's stream reader skips."""
MAX_BUFFERED = 10_000
"""Previews a slow stream may hold back; beyond that it drops them (they are best-effort)."""
THINKING_BLOCKS = frozenset({"thinking", "redacted_thinking"})


@dataclass(frozen=True)
class Preview:
    anchor: int
    """Seq of the ``span.model_request_start`` of the request producing it (of the tool use,
    for tool progress)."""
    event_type: str
    """The previewed event's type (``agent.message`` or ``agent.thinking``), or ``TOOL_PROGRESS``."""
    body: Body
    """The ``event_start``, ``event_delta`` or ``TOOL_PROGRESS`` body as streamed."""


class Subscription:
    """One stream's previews, in publish order, filtered to the event types it asked for."""

    def __init__(self, kinds: frozenset[str]) -> None:
        self.kinds = kinds
        self._items: deque[Preview] = deque()
        self._started: set[str] = set()
        self._news = anyio.Event()

    def offer(self, preview: Preview) -> None:
        if preview.event_type not in self.kinds or len(self._items) >= MAX_BUFFERED:
            return
        body = preview.body
        if body["type"] == "event_start":
            self._started.add(body["event"]["id"])
        elif body["type"] == "event_delta" and body["event_id"] not in self._started:
            return  # its start came before this stream subscribed: a fragment alone means nothing
        self._items.append(preview)
        self._news.set()

    def due(self, before_seq: int) -> list[Body]:
        """Previews whose request started before ``before_seq``: they go before that log event."""
        ready = []
        while self._items and self._items[0].anchor < before_seq:
            ready.append(self._items.popleft().body)
        return ready

    async def published(self) -> None:
        """Return once something was published after the previous call."""
        await self._news.wait()
        self._news = anyio.Event()


class PreviewHub:
    """Publish/subscribe by session id, within one process."""

    def __init__(self) -> None:
        self._subscribers: dict[str, set[Subscription]] = {}

    @contextmanager
    def subscribe(self, session_id: str, kinds: frozenset[str]) -> Iterator[Subscription]:
        subscription = Subscription(kinds)
        if not kinds:
            yield subscription
            return
        self._subscribers.setdefault(session_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            listeners = self._subscribers[session_id]
            listeners.discard(subscription)
            if not listeners:
                del self._subscribers[session_id]

    def publish(self, session_id: str, preview: Preview) -> None:
        for subscription in self._subscribers.get(session_id, ()):
            subscription.offer(preview)


class ResponsePreview:
    """One model request's stream turned into previews; remembers the ids it promised so the
    buffered events can carry them (``assign_ids``).

    Blocks group into events the way ``responses.response_events`` groups them: a run of text
    blocks is one ``agent.message`` (one content entry each), each thinking block one
    ``agent.thinking``, a tool use ends a run, other block types are skipped.
    """

    def __init__(self, hub: PreviewHub, session_id: str, anchor: int) -> None:
        self._hub = hub
        self._session_id = session_id
        self._anchor = anchor
        self.planned: list[tuple[str, str]] = []
        """(event type, id) of each previewed event, in order."""
        self._last_kind: str | None = None
        self._message_id = ""
        self._content_index = -1
        self._text_blocks: dict[int, tuple[str, int]] = {}
        """Model content block index -> (agent.message id, index in its content)."""
        self._broken = False

    def feed(self, event: Any) -> None:
        """Called with every event of the model stream. Never raises: a preview is best-effort,
        and the model call must not fail because of one."""
        if self._broken:
            return
        try:
            self._feed(event)
        except Exception:
            log.exception("preview of %s failed; the stream continues without it", self._session_id)
            self._broken = True

    def _feed(self, event: Any) -> None:
        if event.type == "content_block_start":
            self._block_started(event.index, event.content_block.type)
        elif event.type == "content_block_delta" and event.delta.type == "text_delta":
            slot = self._text_blocks.get(event.index)
            if slot is not None and event.delta.text:
                message_id, index = slot
                delta = {
                    "type": "content_delta",
                    "index": index,
                    "content": {"type": "text", "text": event.delta.text},
                }
                body = {"type": "event_delta", "event_id": message_id, "delta": delta}
                self._hub.publish(self._session_id, Preview(self._anchor, "agent.message", body))

    def _block_started(self, index: int, kind: str) -> None:
        if kind == "text":
            if self._last_kind == "text":
                self._content_index += 1
            else:
                self._message_id, self._content_index = self._start("agent.message"), 0
            self._text_blocks[index] = (self._message_id, self._content_index)
            self._last_kind = "text"
        elif kind in THINKING_BLOCKS:
            self._start("agent.thinking")
            self._last_kind = "thinking"
        elif kind == "tool_use":
            self._last_kind = "tool_use"

    def _start(self, event_type: str) -> str:
        event_id = ids.new_id(ids.EVENT)
        self.planned.append((event_type, event_id))
        body = {"type": "event_start", "event": {"type": event_type, "id": event_id}}
        self._hub.publish(self._session_id, Preview(self._anchor, event_type, body))
        return event_id

    def assign_ids(self, produced: list[Body]) -> None:
        """Give the buffered events the ids their previews announced. Should the grouping ever
        differ, they keep their own ids: the previews then simply go unanswered."""
        previewed = [event for event in produced if event["type"] in PREVIEWABLE]
        if [event["type"] for event in previewed] != [kind for kind, _ in self.planned]:
            if self.planned:
                log.warning("previews of %s do not match the reply; ids not reused", self._session_id)
            return
        for event, (_, event_id) in zip(previewed, self.planned, strict=True):
            event["id"] = event_id


def parse_kinds(values: list[str]) -> frozenset[str]:
    """``event_deltas`` values (repeated or comma-separated); ValueError names an unknown one."""
    kinds = {kind.strip() for value in values for kind in value.split(",") if kind.strip()}
    known = PREVIEWABLE | {TOOL_PROGRESS}
    unknown = sorted(kinds - known)
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of {sorted(known)}")
    return frozenset(kinds)
