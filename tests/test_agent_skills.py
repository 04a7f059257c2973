"""Agents with skills, through the official SDK: pinned versions, the prompt, the sandbox.

A custom skill uploaded with ``skills.create`` is named by ``agents.create(skills=…)``; the
agent stores it pinned to a version. In a session the system prompt lists each skill's name
and description only, and the sandbox holds the skill's folder read-only under
``/mnt/session/skills/<name>``: the model reads the body when it needs it (progressive
disclosure), which the tests check on the requests the scripted model received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsAgent

from tests.conftest import Scripts
from tests.support.sessions import send_and_stream, user_message
from tests.support.skills import folder_files, skill_md

BODY_MARKER = "Step one: open the form with scripts/fill.py"


def _skill(client: anthropic.Anthropic, root: Path, name: str, description: str) -> Any:
    files = {
        "SKILL.md": skill_md(name, description) + f"\n{BODY_MARKER}\n".encode(),
        "scripts/fill.py": b"print(1)\n",
    }
    return client.beta.skills.create(files=folder_files(root, files, top=name.replace("-", "_")))


def _agent(client: anthropic.Anthropic, marker: str, skills: list[dict[str, Any]]) -> Any:
    return client.beta.agents.create(
        name="skilled",
        model="claude-sonnet-4-6",
        system=marker,
        tools=[{"type": "agent_toolset_20260401"}],
        skills=skills,  # type: ignore[arg-type]
    )


def test_an_agent_pins_its_skills_and_refuses_what_tether_cannot_serve(
    client: anthropic.Anthropic, tmp_path: Path
) -> None:
    skill = _skill(client, tmp_path / "a", "form-filler", "Fills forms.")
    agent = _agent(client, "pinned", [{"type": "custom", "skill_id": skill.id}])
    raw = client.get(f"/v1/agents/{agent.id}", cast_to=object)
    BetaManagedAgentsAgent.model_validate(raw)
    assert raw["skills"] == [{"type": "custom", "skill_id": skill.id, "version": skill.latest_version_id}]
    newer = client.beta.skills.versions.create(
        skill.id, files=folder_files(tmp_path / "b", {"SKILL.md": skill_md("form-filler", "Fills forms v2.")})
    )
    assert client.beta.agents.retrieve(agent.id).skills[0].version == skill.latest_version_id  # still pinned
    updated = client.beta.agents.update(
        agent.id, version=agent.version, skills=[{"type": "custom", "skill_id": skill.id}]
    )
    assert updated.skills[0].version == newer.id and updated.version == agent.version + 1

    for skills, message in [
        ([{"type": "anthropic", "skill_id": "xlsx"}], "Anthropic-provided skill"),
        ([{"type": "custom", "skill_id": "skill_doesnotexist"}], "not found"),
        ([{"type": "custom", "skill_id": skill.id, "version": "123"}], "not found"),
        ([{"type": "custom", "skill_id": skill.id}, {"type": "custom", "skill_id": skill.id}], "both named"),
        ([{"type": "custom", "skill_id": skill.id, "extra": 1}], "extra"),
    ]:
        with pytest.raises(anthropic.BadRequestError, match=message):
            _agent(client, "refused", skills)


def test_the_prompt_lists_skills_and_the_model_reads_a_body_from_the_read_only_skill_folder(
    client: anthropic.Anthropic, environment: Any, scripts: Scripts, tmp_path: Path
) -> None:
    skill = _skill(client, tmp_path, "form-filler", "Fills PDF forms from JSON; use for any form.")
    marker = scripts.add(
        [
            {
                "content": [
                    {
                        "type": "tool_use",
                        "name": "read",
                        "input": {"file_path": "/mnt/session/skills/form-filler/SKILL.md"},
                    }
                ]
            },
            {
                "content": [
                    {
                        "type": "tool_use",
                        "name": "bash",
                        "input": {
                            "command": "cd /mnt/session/skills/form-filler && ls -R && touch x; echo rc=$?"
                        },
                    }
                ]
            },
            {"content": [{"type": "text", "text": "filled"}]},
        ]
    )
    agent = _agent(client, marker, [{"type": "custom", "skill_id": skill.id}])
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    events = send_and_stream(client, session.id, [user_message("fill the form")])
    results = [
        (bool(e.is_error), "".join(b.text for b in e.content if b.type == "text"))
        for e in events
        if e.type == "agent.tool_result"
    ]
    assert not results[0][0] and BODY_MARKER in results[0][1]
    listing = results[1][1]
    assert (
        "SKILL.md" in listing
        and "fill.py" in listing
        and "Read-only file system" in listing
        and "rc=1" in listing
    )
    assert not [e for e in events if e.type == "session.error"]

    requests = scripts.requests_for(marker)
    first_system = str(requests[0]["system"])
    assert "form-filler: Fills PDF forms from JSON; use for any form." in first_system
    assert "/mnt/session/skills/form-filler/SKILL.md" in first_system
    assert BODY_MARKER not in str(requests[0]["messages"]) and BODY_MARKER not in first_system
    assert BODY_MARKER in str(requests[1]["messages"])  # the body arrived only through read
    assert all(str(r["system"]) == first_system for r in requests)  # a stable, cacheable prefix
