"""Skills and session resources: what a session works on, placed in its sandbox before it starts.

This example uploads a CSV with ``files.upload`` and a custom skill (a folder with a
``SKILL.md``) with ``skills.create``, makes an agent that carries the skill, and starts a
session with the CSV as a resource. The sandbox then holds the file read-only at
``/mnt/session/uploads/<file_id>`` and the skill's folder read-only at
``/mnt/session/skills/report-writer``. The system prompt lists only the skill's name and
description; the model reads the skill's body when the task needs it.

    .venv/bin/python examples/skills_and_files.py

What the model is asked to do: sum the scores in the uploaded CSV the way the skill says. The
scripted model (no ``ANTHROPIC_API_KEY``) is taught to read the skill, run its script on the
file with ``bash``, and report the result.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from _common import MODEL, connect, describe, is_noise, teach, turn, user_message

MARKER = "Tether skills and files example."
SKILL_NAME = "report-writer"
SKILL_MD = f"""---
name: {SKILL_NAME}
description: Summarises score tables (CSV); use it whenever a table of scores must be totalled.
---

# Report writer

Total a score table with `python3 /mnt/session/skills/{SKILL_NAME}/scripts/total.py FILE`.
Report the total in one sentence.
"""
TOTAL_PY = """import csv, sys

rows = list(csv.DictReader(open(sys.argv[1])))
print(f"{len(rows)} rows, total score {sum(int(r['score']) for r in rows)}")
"""
SCORES = b"name,score\nada,3\nlin,5\ngrace,9\n"


def script(file_id: str) -> list[dict[str, Any]]:
    skill = f"/mnt/session/skills/{SKILL_NAME}"
    data = f"/mnt/session/uploads/{file_id}"
    return [
        {"content": [{"type": "tool_use", "name": "read", "input": {"file_path": f"{skill}/SKILL.md"}}]},
        {
            "content": [
                {
                    "type": "tool_use",
                    "name": "bash",
                    "input": {"command": f"python3 {skill}/scripts/total.py {data}"},
                }
            ]
        },
        {"content": [{"type": "text", "text": "The table has {{last_tool_result}}"}]},
    ]


def upload_skill(client: Any) -> Any:
    """Upload the skill folder as the SDK does (``files_from_dir``): paths keep the folder's name."""
    from anthropic.lib import files_from_dir

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "report_writer"
        (folder / "scripts").mkdir(parents=True)
        (folder / "SKILL.md").write_text(SKILL_MD)
        (folder / "scripts" / "total.py").write_text(TOTAL_PY)
        return client.beta.skills.create(files=files_from_dir(folder), display_name="Report writer")


def main() -> None:
    client = connect()
    upload = client.beta.files.upload(file=("scores.csv", SCORES, "text/csv"))
    teach(client, MARKER, script(upload.id))
    skill = upload_skill(client)
    print(f"skill {skill.id} version {skill.latest_version_id}")
    agent = client.beta.agents.create(
        name="report-desk",
        model=MODEL,
        system=f"{MARKER} You total score tables.",
        tools=[{"type": "agent_toolset_20260401"}],
        skills=[{"type": "custom", "skill_id": skill.id}],
    )
    environment = client.beta.environments.create(name="skills-and-files")
    session = client.beta.sessions.create(
        agent=agent.id, environment_id=environment.id, resources=[{"type": "file", "file_id": upload.id}]
    )
    for resource in client.beta.sessions.resources.list(session.id):
        print(f"resource {resource.id} at {resource.mount_path}")
    for event in turn(
        client, session.id, [user_message(f"Total the scores in /mnt/session/uploads/{upload.id}.")]
    ):
        if not is_noise(event):
            print(describe(event), flush=True)
    print(f"session {session.id}")


if __name__ == "__main__":
    main()
