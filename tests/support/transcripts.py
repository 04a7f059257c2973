"""Transcripts built from event bodies, for tests of what the harness derives from a log."""

from __future__ import annotations

from typing import Any

from gateway.sessionlog.transcript import Transcript
from gateway.store.base import StoredEvent


def transcript_of(*bodies: dict[str, Any]) -> Transcript:
    """The log of ``bodies`` in order (seq 1, 2, ...); a body without an ``id`` gets ``sevt_<seq>``."""
    return Transcript.from_events(
        [
            StoredEvent(
                "sesn_t", seq, body.get("id", f"sevt_{seq}"), body["type"], {"id": f"sevt_{seq}", **body}
            )
            for seq, body in enumerate(bodies, start=1)
        ]
    )
