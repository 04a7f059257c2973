"""Refused skill uploads through the SDK: each a 4xx naming the problem, nothing left on disk.

A SKILL.md whose front matter is missing or breaks a rule is a 400 naming its line; a file
name that could leave the folder (``..``, absolute, backslashes, control characters) or breaks
its shape (two top-level directories, duplicates, a file that is also a directory, no SKILL.md)
is a 400; so are declared links and too many files; too many bytes is a 413. A gateway start
removes what a killed gateway was staging.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anthropic
import httpx2
import pytest
from anthropic._types import FileTypes

from gateway.resources import skills
from gateway.resources.skill_uploads import MAX_FILES, MAX_TOTAL_BYTES
from tests.support import skill_fixtures
from tests.support.processes import ServerProcess, running_server
from tests.support.skills import skill_md, write_folder

# The shared fixtures, under the names the tests ask for.
answers, client, data_dir, unchanged = (
    skill_fixtures.answers,
    skill_fixtures.client,
    skill_fixtures.data_dir,
    skill_fixtures.unchanged,
)


BAD_SKILL_MD = [
    (b"# Just a title\n", 1, "must start with YAML front matter"),
    (b"---\nname: ok\ndescription: d\n", 1, "never closed"),
    (b"---\ndescription: d\n---\n", 1, "no 'name'"),
    (b"---\nname: ok\n---\n", 1, "no 'description'"),
    (b"---\nname: PDF-Forms\ndescription: d\n---\n", 2, "lowercase letters, digits and hyphens"),
    (b"---\ndescription: d\nname: claude-helper\n---\n", 3, "reserved word 'claude'"),
    (b"---\nname: my-anthropic-tool\ndescription: d\n---\n", 2, "reserved word 'anthropic'"),
    (b"---\nname: " + b"a" * 65 + b"\ndescription: d\n---\n", 2, "at most 64 characters"),
    (b"---\nname: 123\ndescription: d\n---\n", 2, "name: Input should be a valid string"),
    (b"---\nname: ok\ndescription: ''\n---\n", 3, "description: must not be empty"),
    (b"---\nname: ok\ndescription: " + b"d" * 1025 + b"\n---\n", 3, "at most 1024 characters"),
    (b"---\nname: ok\ndescription: use <system>me</system>\n---\n", 3, "XML tags"),
    (b"---\nname: ok\n  bad: indent\ndescription: d\n---\n", 3, "not valid YAML"),
    (b"---\nname: ok\ndescription: d\nname: ok-too\n---\n", 4, "'name' is given twice"),
    (b"---\n- name\n- description\n---\n", 2, "must be a mapping"),
    (b"---\nname: ok\ndescription: caf\xe9\n---\n", 3, "not valid UTF-8"),
]


@pytest.mark.parametrize(("content", "line", "problem"), BAD_SKILL_MD)
def test_a_bad_skill_md_is_a_400_naming_its_line(
    client: anthropic.Anthropic, content: bytes, line: int, problem: str, unchanged: None
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.skills.create(files=[("bad/SKILL.md", content), ("bad/x.txt", b"x")])
    message = refused.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith(f"SKILL.md line {line}: ") and problem in message, message


UNSAFE = [
    (["../evil/SKILL.md"], "'..' (path traversal) is not allowed"),
    (["ok/../../etc/SKILL.md"], "'..' (path traversal) is not allowed"),
    (["ok/SKILL.md", "ok/scripts/.."], "'..' (path traversal) is not allowed"),
    (["ok/./SKILL.md"], "empty and '.' path components"),
    (["ok//SKILL.md"], "empty and '.' path components"),
    (["ok/SKILL.md", "ok/scripts/"], "empty and '.' path components"),
    (["/etc/skill/SKILL.md"], "absolute path"),
    (["C:/skill/SKILL.md"], "absolute path"),
    (["ok\\SKILL.md"], "backslashes"),
    (["C:\\skill\\SKILL.md"], "backslashes"),
    (["ok/SKILL.md", "ok/a\x00b"], "NUL or control characters"),
    (["ok/SKILL.md", "ok/a\nb"], "NUL or control characters"),
    (["ok/SKILL.md", "other/notes.md"], "one top-level directory"),
    (["SKILL.md"], "not inside a folder"),
    (["ok/SKILL.md", "ok/SKILL.md"], "uploaded twice"),
    (["ok/SKILL.md", "ok/lib", "ok/lib/x.py"], "both a file and a directory"),
    (["ok/SKILL.md", "ok/lib/x.py", "ok/lib"], "both a file and a directory"),
    (["ok/notes.md"], "ok/SKILL.md is missing"),
    ([], "files"),
]


@pytest.mark.parametrize(("names", "problem"), UNSAFE)
def test_unsafe_or_malformed_file_names_are_refused_and_nothing_is_kept(
    client: anthropic.Anthropic, names: list[str], problem: str, unchanged: None
) -> None:
    files = [(name, skill_md() if name.endswith("SKILL.md") else b"data") for name in names]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.skills.create(files=files)
    assert problem in refused.value.body["error"]["message"]  # type: ignore[index]


def test_a_file_declared_as_a_symlink_is_refused(client: anthropic.Anthropic, unchanged: None) -> None:
    files: list[FileTypes] = [("ok/SKILL.md", skill_md()), ("ok/passwd", b"/etc/passwd", "inode/symlink")]
    with pytest.raises(anthropic.BadRequestError, match="declared a link"):
        client.beta.skills.create(files=files)


def test_a_raw_nul_byte_in_a_part_filename_is_refused(
    gateway: ServerProcess, api_key: str, unchanged: None
) -> None:
    """The SDK escapes control characters (``%00``); a hand-made body can carry the byte itself."""
    body = (
        b'--b\r\nContent-Disposition: form-data; name="files[]"; filename="ok/SKILL.md"\r\n\r\n'
        + skill_md()
        + b'\r\n--b\r\nContent-Disposition: form-data; name="files[]"; filename="ok/a\x00b"\r\n\r\nx'
        + b"\r\n--b--\r\n"
    )
    response = httpx2.post(
        gateway.url + "/v1/skills",
        content=body,
        headers={"x-api-key": api_key, "content-type": "multipart/form-data; boundary=b"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_more_files_than_the_limit_are_refused(client: anthropic.Anthropic, unchanged: None) -> None:
    files = [("ok/SKILL.md", skill_md())] + [(f"ok/f{i}.txt", b"x") for i in range(MAX_FILES)]
    with pytest.raises(anthropic.BadRequestError, match=f"at most {MAX_FILES} files"):
        client.beta.skills.create(files=files)


def test_files_over_the_total_limit_are_a_413_and_leave_nothing_on_disk(
    client: anthropic.Anthropic, data_dir: Path, unchanged: None
) -> None:
    head = skill_md()
    big = ("ok/big.bin", b"\xab" * (MAX_TOTAL_BYTES - len(head) + 1))
    with pytest.raises(anthropic.APIStatusError) as refused:
        client.beta.skills.create(files=[("ok/SKILL.md", head), big])
    assert refused.value.status_code == 413
    assert refused.value.body == {  # type: ignore[comparison-overlap]
        "type": "error",
        "error": {
            "type": "request_too_large",
            "message": f"files: a skill's files may total at most {MAX_TOTAL_BYTES} bytes",
        },
    }


def test_files_exactly_at_the_total_limit_are_accepted(client: anthropic.Anthropic, data_dir: Path) -> None:
    head = skill_md()
    full = b"\xcd" * (MAX_TOTAL_BYTES - len(head))
    skill = client.beta.skills.create(files=[("ok/SKILL.md", head), ("ok/full.bin", full)])
    stored = skills.version_dir(data_dir, skill.id, skill.latest_version_id) / "full.bin"
    assert stored.read_bytes() == full
    client.beta.skills.delete(skill.id)


def test_a_gateway_start_removes_stale_staging_folders_and_keeps_fresh_ones_and_versions(
    tmp_path: Path, model_server: ServerProcess, api_key: str
) -> None:
    """A folder a killed gateway was staging goes at the next start; a young one may be a
    replica's upload in progress on a shared data directory, and versions are never touched."""
    root = skills.skills_dir(tmp_path / "data")
    stale, fresh, kept = root / ".staging-old", root / ".staging-new", root / "skill_Kept1" / "1"
    for folder in (stale, fresh, kept):
        write_folder(folder, {"SKILL.md": skill_md()}, top="x")
    for folder in (stale, root / "skill_Kept1", kept):
        os.utime(folder, (time.time() - 7200, time.time() - 7200))
    env = {"TETHER_API_KEYS": api_key, "TETHER_MODEL_BASE_URL": model_server.url, "ANTHROPIC_API_KEY": ""}
    with running_server(["gateway", "--port", "0", "--data-dir", str(tmp_path / "data")], env):
        assert sorted(p.name for p in root.iterdir()) == [".staging-new", "skill_Kept1"]
        assert (kept / "x" / "SKILL.md").exists()
