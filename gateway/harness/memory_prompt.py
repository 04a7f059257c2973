"""The memory section of the system prompt: the stores mounted in the session, and how to use them.

Each attached store is listed with where it is mounted, whether it can be changed, and the
description and instructions snapshotted when it was attached. Those never change during a
session, so the prompt (and the cached prefix) stays the same from call to call and after a
restart.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.harness.skill_prompt import with_section
from gateway.schemas.memory_stores import MAX_MEMORY_BYTES
from gateway.store.base import Body

INTRODUCTION = (
    "Memory stores are mounted as directories of UTF-8 text files, kept beyond this session. "
    "Look in them before starting a task. In a read-write store, what you create, change or "
    "delete is saved when each tool call ends, for later sessions to read; keep each file under "
    f"{MAX_MEMORY_BYTES // 1000} KB, and store facts and lessons, not transcripts."
)


def section(attached: Sequence[Body]) -> str:
    lines = []
    for store in attached:
        access = "read-write" if store["access"] == "read_write" else "read-only"
        described = f": {store['description']}" if store.get("description") else ""
        lines.append(f"- {store['name']} at {store['mount_path']} ({access}){described}")
        if store.get("instructions"):
            lines.append(f"  Instructions: {store['instructions']}")
    return "\n".join(["<memory>", INTRODUCTION, *lines, "</memory>"])


def with_memory(agent: Body, attached: Sequence[Body]) -> Body:
    """The agent with the session's memory stores listed after its system prompt (unchanged without)."""
    return with_section(agent, section(attached)) if attached else agent
