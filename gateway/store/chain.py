"""The tamper-evident chain over a session's log.

Each event stores the hash of its predecessor and its own hash over
``session_id, seq, prev_hash`` and the canonical JSON of its body, so editing,
deleting, inserting or reordering a row breaks the chain at that row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def link_hash(session_id: str, seq: int, prev_hash: str, body: dict[str, Any]) -> str:
    material = f"{session_id}\n{seq}\n{prev_hash}\n{canonical(body)}"
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True)
class ChainLink:
    seq: int
    event_id: str
    prev_hash: str
    hash: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    events: int
    head: str
    broken_at: ChainLink | None = None
    reason: str = ""


def verify(session_id: str, links: Iterable[ChainLink]) -> Verdict:
    """Walk the log in seq order; report the first event whose link does not hold."""
    expected_prev, expected_seq, count = GENESIS, 1, 0
    for link in links:
        count += 1
        if link.seq != expected_seq:
            return Verdict(
                False, count, expected_prev, link, f"seq {link.seq} where {expected_seq} was expected"
            )
        if link.prev_hash != expected_prev:
            return Verdict(False, count, expected_prev, link, "prev_hash does not match the preceding event")
        if link.body.get("id") != link.event_id:
            return Verdict(False, count, expected_prev, link, "the body's id differs from the row's id")
        if link_hash(session_id, link.seq, link.prev_hash, link.body) != link.hash:
            return Verdict(False, count, expected_prev, link, "the event's content does not match its hash")
        expected_prev, expected_seq = link.hash, expected_seq + 1
    return Verdict(True, count, expected_prev)
