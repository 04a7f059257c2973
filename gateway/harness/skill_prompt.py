"""The skills section of the system prompt: names and descriptions only (progressive disclosure).

The model sees one line per skill and reads a skill's ``SKILL.md`` with the file tools when a
task calls for it, so an agent can carry many skills without paying for their bodies in every
request. The section depends only on the pinned versions, which never change, so a restarted
gateway sends the same prompt (and the cached prefix stays valid).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.resources.skill_index import skill_path
from gateway.resources.skills import SkillVersionRef
from gateway.schemas.session_resources import SKILLS_AREA
from gateway.store.base import Body

INTRODUCTION = (
    f"You have skills: folders of instructions, scripts and resources under {SKILLS_AREA}. "
    "When a task matches a skill's description, first read that skill's SKILL.md with the read "
    "tool and follow it; open the skill's other files only as its SKILL.md directs."
)


def section(refs: Sequence[SkillVersionRef]) -> str:
    lines = [f"- {ref.name}: {ref.description} ({skill_path(ref)}/SKILL.md)" for ref in refs]
    return "\n".join(["<skills>", INTRODUCTION, *lines, "</skills>"])


def with_section(agent: Body, text: str) -> Body:
    """The agent with ``text`` after its own system prompt, a blank line between."""
    own = agent.get("system") or ""
    return {**agent, "system": f"{own}\n\n{text}" if own else text}


def with_skills(agent: Body, refs: Sequence[SkillVersionRef]) -> Body:
    """The agent with its skills listed after its own system prompt (unchanged without skills)."""
    return with_section(agent, section(refs)) if refs else agent
