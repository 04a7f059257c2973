"""The skill versions an agent names, resolved once per process.

A version never changes once made (a new upload is a new version), so what one read found
serves every later session and request: the harness lists the skills in the system prompt
and the placer puts their files in the sandbox from the same answer. A version deleted since
the agent pinned it resolves to nothing, and is left out of both.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.errors import NotFound
from gateway.resources import skills
from gateway.resources.skills import SkillVersionRef
from gateway.schemas.session_resources import SKILLS_AREA
from gateway.store.base import Body, Store

MAX_REMEMBERED = 4096


def skill_path(ref: SkillVersionRef) -> str:
    """Where the sandbox holds a skill's folder (read-only)."""
    return f"{SKILLS_AREA}/{ref.directory}"


class SkillIndex:
    def __init__(self, max_remembered: int = MAX_REMEMBERED) -> None:
        self._known: OrderedDict[tuple[str, str], SkillVersionRef | None] = OrderedDict()
        self.max_remembered = max_remembered

    async def refs(self, store: Store, agent: Body) -> list[SkillVersionRef]:
        """The agent's skills that still exist, in the agent's order."""
        found: list[SkillVersionRef] = []
        for skill in agent.get("skills") or []:
            key = (str(skill["skill_id"]), str(skill["version"]))
            if key not in self._known:
                try:
                    self._known[key] = await skills.resolve(store, *key)
                except NotFound:
                    self._known[key] = None
                while len(self._known) > self.max_remembered:
                    self._known.popitem(last=False)
            ref = self._known.get(key)
            if ref is not None:
                found.append(ref)
        return found
