"""How the scripted model answers Tether's summarising requests, and counts turns across them.

A request whose system prompt contains ``COMPACTION_MARKER`` is a summarising request (the
harness's ``SUMMARY_SYSTEM_PROMPT`` begins with it). It is answered by the matching script's
``compaction`` turn, else with ``{{conversation_digest}}``: a deterministic digest built
from the request alone::

    [scripted summary: N assistant turns]
    - first user text
    - ...

``N`` is the count carried by the previous digest in the request (if any) plus the request's
assistant messages. The lines are the previous digest's, then one per user text block of the
request (whitespace collapsed, clipped to ``LINE_CHARS``), leaving out the previous digest
itself and the request's last text block (the harness's instruction to summarise). Only the
first ``KEEP_FIRST`` and last ``KEEP_LAST`` lines are kept: a digest stays small however long
the session runs, and what the session began with survives every compaction.

Turn selection survives compaction through ``N``: an ordinary request's turn is the ``N`` of
the digest in it plus its own assistant messages, so a script's turns line up with the whole
conversation as if nothing had been compacted. ``{{context_summary}}`` renders the digest a
request carries (empty when there is none), so a scripted reply can answer from it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "COMPACTION_MARKER",
    "carried_turns",
    "context_summary",
    "conversation_digest",
    "is_compaction_request",
    "turn_of",
]

COMPACTION_MARKER = "Tether context compaction"
HEADER = re.compile(r"\[scripted summary: (\d+) assistant turns\]")
LINE_CHARS = 160
KEEP_FIRST = 4
KEEP_LAST = 6
DIGEST = "{{conversation_digest}}"
TURN = -1
"""The attempt-counter key of a script's ``compaction`` turn (ordinary turns count from 0)."""


def is_compaction_request(request: Mapping[str, Any]) -> bool:
    system = request.get("system")
    if isinstance(system, list):
        system = "\n".join(b.get("text", "") for b in system if isinstance(b, dict))
    return isinstance(system, str) and COMPACTION_MARKER in system


def _user_texts(messages: list[Any]) -> list[str]:
    """Every text block of every user message, in order."""
    texts = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
            continue
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
    return texts


def context_summary(messages: list[Any]) -> str:
    """The digest a request carries, from its header on; empty when there is none."""
    for text in _user_texts(messages):
        found = HEADER.search(text)
        if found:
            return text[found.start() :]
    return ""


def carried_turns(messages: list[Any]) -> int:
    """The assistant turns compacted away before this request, by the digest it carries."""
    found = HEADER.search(context_summary(messages))
    return int(found.group(1)) if found else 0


def turn_of(messages: list[Any]) -> int:
    """An ordinary request's turn: the turns compacted away plus its assistant messages."""
    return carried_turns(messages) + sum(
        1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant"
    )


def conversation_digest(messages: list[Any]) -> str:
    previous = context_summary(messages)
    lines = [line[2:] for line in previous.splitlines()[1:] if line.startswith("- ")]
    texts = _user_texts(messages)[:-1]  # the last one is the instruction to summarise
    for text in texts:
        if HEADER.search(text):
            continue
        line = " ".join(text.split())
        if line:
            lines.append(line[:LINE_CHARS])
    if len(lines) > KEEP_FIRST + KEEP_LAST:
        lines = lines[:KEEP_FIRST] + lines[-KEEP_LAST:]
    return "\n".join(
        [f"[scripted summary: {turn_of(messages)} assistant turns]", *(f"- {line}" for line in lines)]
    )
