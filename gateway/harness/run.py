"""One harness run of one session, shared by the loop, the runner and compaction."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.sessionlog.transcript import ToolCall
from gateway.store.base import Lease


@dataclass
class Run:
    """One harness run of one session: its lease (every append is fenced with it) and what
    is in flight, so an interrupt or a shutdown can close it off in the log."""

    session_id: str
    lease: Lease | None = None
    vault_ids: list[str] = field(default_factory=list)
    model_start_id: str | None = None
    tool_call: ToolCall | None = None
    last_seq: int = 0
    """The newest seq this run has seen or written: anything later arrived after its decisions."""
