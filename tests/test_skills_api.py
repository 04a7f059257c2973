"""``client.beta.skills`` and ``client.beta.skills.versions`` against a gateway process.

A skill is uploaded as its folder (the SDK's ``files_from_dir``: one part per file, named by its
path) and kept under ``DATA_DIR/skills/<skill_id>/<version>/`` byte for byte; versions are
immutable, listed newest first, downloadable as a zip and deleted with their files; Anthropic's
own skills are not served; ``resolve`` and ``version_dir`` give the rest of the gateway a version
to place. Every answer is validated against the SDK's own model, with no field it does not know
(``tests.support.skills.StrictAnswers``). Refused uploads are in ``test_skill_uploads``.
"""

from __future__ import annotations

import io
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anthropic
import httpx2
import pytest
from anthropic._types import FileTypes

from gateway.errors import InvalidRequest, NotFound
from gateway.resources import skills
from gateway.store import open_store
from tests.support import skill_fixtures
from tests.support.processes import ServerProcess
from tests.support.skills import (
    FOLDER,
    StrictAnswers,
    folder_files,
    on_disk,
    sdk,
    skill_md,
)

# The shared fixtures, under the names the tests ask for.
answers, client, data_dir, unchanged = (
    skill_fixtures.answers,
    skill_fixtures.client,
    skill_fixtures.data_dir,
    skill_fixtures.unchanged,
)


def test_a_folder_is_created_as_a_skill_and_its_files_stored_byte_for_byte(
    client: anthropic.Anthropic, data_dir: Path, tmp_path: Path
) -> None:
    uploaded = {"SKILL.md": skill_md(), **FOLDER}
    skill = client.beta.skills.create(files=folder_files(tmp_path, uploaded))
    assert skill.id.startswith("skill_") and skill.type == "skill"
    assert skill.source.type == "custom" and skill.display_name == "pdf-forms"
    assert skill.latest_version_id.isdigit() and skill.created_at == skill.updated_at

    assert client.beta.skills.retrieve(skill.id) == skill
    version = client.beta.skills.versions.retrieve("latest", skill_id=skill.id)
    assert (version.id, version.skill_id) == (skill.latest_version_id, skill.id)
    assert (version.name, version.description) == ("pdf-forms", "Fills PDF forms from JSON.")
    assert on_disk(skills.version_dir(data_dir, skill.id, version.id)) == uploaded
    assert not list(skills.skills_dir(data_dir).glob(".staging-*"))


def test_a_display_name_given_at_creation_is_kept_and_a_multi_line_one_refused(
    client: anthropic.Anthropic, tmp_path: Path, unchanged: None
) -> None:
    folder = folder_files(tmp_path, {"SKILL.md": skill_md()})
    named = client.beta.skills.create(files=folder, display_name="PDF forms (team)")
    assert named.display_name == "PDF forms (team)"
    client.beta.skills.delete(named.id)
    with pytest.raises(anthropic.BadRequestError, match="display_name: must be a single line"):
        client.beta.skills.create(files=folder, display_name="two\nlines")


def test_skills_are_listed_newest_first_page_by_page_and_filtered_by_source(
    client: anthropic.Anthropic, tmp_path: Path
) -> None:
    made = [
        client.beta.skills.create(files=folder_files(tmp_path / str(i), {"SKILL.md": skill_md(f"s-{i}")}))
        for i in range(3)
    ]
    first = client.beta.skills.list(limit=2)
    assert [skill.id for skill in first.data] == [made[2].id, made[1].id]
    second = client.beta.skills.list(limit=2, page=first.next_page)
    assert second.data[0].id == made[0].id
    everything = [skill.id for skill in client.beta.skills.list(limit=2)]  # the SDK follows the pages
    assert everything[:3] == [made[2].id, made[1].id, made[0].id]
    assert [s.id for s in client.beta.skills.list(source="custom", limit=3)][:3] == everything[:3]
    assert client.beta.skills.list(source="anthropic").data == []
    with pytest.raises(anthropic.BadRequestError, match="source: must be one of"):
        client.beta.skills.list(source="bogus")
    with pytest.raises(anthropic.BadRequestError, match="limit"):
        client.beta.skills.list(limit=1001)


def test_versions_are_created_listed_retrieved_and_deleted_with_their_files(
    client: anthropic.Anthropic, data_dir: Path, tmp_path: Path
) -> None:
    first_files = {"SKILL.md": skill_md(), **FOLDER}
    skill = client.beta.skills.create(files=folder_files(tmp_path / "v1", first_files))
    second_files = {"SKILL.md": skill_md(description="Fills and signs PDF forms."), "sign.py": b"sign()\n"}
    second = client.beta.skills.versions.create(skill.id, files=folder_files(tmp_path / "v2", second_files))
    assert int(second.id) > int(skill.latest_version_id)
    assert second.description == "Fills and signs PDF forms." and second.name == "pdf-forms"
    updated = client.beta.skills.retrieve(skill.id)
    assert updated.latest_version_id == second.id and updated.updated_at > skill.updated_at
    assert on_disk(skills.version_dir(data_dir, skill.id, second.id)) == second_files
    assert on_disk(skills.version_dir(data_dir, skill.id, skill.latest_version_id)) == first_files

    page = client.beta.skills.versions.list(skill.id, limit=1)
    assert [v.id for v in page.data] == [second.id]
    rest = client.beta.skills.versions.list(skill.id, limit=1, page=page.next_page)
    assert [v.id for v in rest.data] == [skill.latest_version_id] and rest.next_page is None
    assert client.beta.skills.versions.retrieve(skill.latest_version_id, skill_id=skill.id).description == (
        "Fills PDF forms from JSON."
    )

    deleted = client.beta.skills.versions.delete(second.id, skill_id=skill.id)
    assert (deleted.type, deleted.id) == ("skill_version_deleted", second.id)
    assert not skills.version_dir(data_dir, skill.id, second.id).exists()
    assert client.beta.skills.retrieve(skill.id).latest_version_id == skill.latest_version_id
    with pytest.raises(anthropic.NotFoundError, match=second.id):
        client.beta.skills.versions.retrieve(second.id, skill_id=skill.id)
    with pytest.raises(anthropic.ConflictError, match="only version"):
        client.beta.skills.versions.delete(skill.latest_version_id, skill_id=skill.id)
    with pytest.raises(anthropic.BadRequestError, match="not a version id"):
        client.beta.skills.versions.delete("latest", skill_id=skill.id)


def test_versions_uploaded_at_once_get_distinct_ids_and_the_highest_is_latest(
    client: anthropic.Anthropic, data_dir: Path
) -> None:
    skill = client.beta.skills.create(files=[("x/SKILL.md", skill_md())])

    def upload(i: int) -> str:
        files: list[FileTypes] = [("x/SKILL.md", skill_md()), ("x/n.txt", str(i).encode())]
        return client.beta.skills.versions.create(skill.id, files=files).id

    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(upload, range(4)))
    assert len(set(made)) == 4
    listed = {v.id for v in client.beta.skills.versions.list(skill.id, limit=10)}
    assert listed == {*made, skill.latest_version_id}
    assert client.beta.skills.retrieve(skill.id).latest_version_id == max(listed, key=int)
    for i, version in enumerate(made):
        assert (skills.version_dir(data_dir, skill.id, version) / "n.txt").read_bytes() == str(i).encode()
    client.beta.skills.delete(skill.id)


def test_a_new_version_must_keep_the_skills_name(
    client: anthropic.Anthropic, tmp_path: Path, unchanged: None
) -> None:
    skill = client.beta.skills.create(files=folder_files(tmp_path / "a", {"SKILL.md": skill_md()}))
    renamed = folder_files(tmp_path / "b", {"SKILL.md": skill_md("other-name")})
    with pytest.raises(anthropic.BadRequestError, match=r"SKILL\.md line 2: name: 'other-name' differs"):
        client.beta.skills.versions.create(skill.id, files=renamed)
    client.beta.skills.delete(skill.id)


def test_deleting_a_skill_removes_every_version_and_all_its_files(
    client: anthropic.Anthropic, data_dir: Path, tmp_path: Path
) -> None:
    skill = client.beta.skills.create(files=folder_files(tmp_path / "a", {"SKILL.md": skill_md(), **FOLDER}))
    client.beta.skills.versions.create(skill.id, files=folder_files(tmp_path / "b", {"SKILL.md": skill_md()}))
    deleted = client.beta.skills.delete(skill.id)
    assert (deleted.type, deleted.id) == ("skill_deleted", skill.id)
    assert not (skills.skills_dir(data_dir) / skill.id).exists()
    with pytest.raises(anthropic.NotFoundError):
        client.beta.skills.retrieve(skill.id)
    with pytest.raises(anthropic.NotFoundError):
        client.beta.skills.versions.list(skill.id)
    assert skill.id not in [s.id for s in client.beta.skills.list(limit=1000)]


def test_a_version_downloads_as_a_zip_under_the_skills_name(
    client: anthropic.Anthropic, tmp_path: Path
) -> None:
    uploaded = {"SKILL.md": skill_md(), **FOLDER}
    skill = client.beta.skills.create(files=folder_files(tmp_path, uploaded))
    archive = client.beta.skills.versions.download(skill.latest_version_id, skill_id=skill.id).read()
    with zipfile.ZipFile(io.BytesIO(archive)) as unpacked:
        assert {name: unpacked.read(name) for name in unpacked.namelist()} == {
            f"pdf-forms/{path}": data for path, data in uploaded.items()
        }


def test_anthropic_skills_are_not_served_and_unknown_ids_are_404s(client: anthropic.Anthropic) -> None:
    for skill_id in ("pdf", "xlsx"):
        with pytest.raises(anthropic.NotFoundError, match="Tether serves custom skills only"):
            client.beta.skills.retrieve(skill_id)
        with pytest.raises(anthropic.NotFoundError, match="Tether serves custom skills only"):
            client.beta.skills.versions.retrieve("latest", skill_id=skill_id)
    with pytest.raises(anthropic.NotFoundError, match="skill 'skill_missing' not found"):
        client.beta.skills.retrieve("skill_missing")
    with pytest.raises(anthropic.NotFoundError):
        client.beta.skills.versions.create("skill_missing", files=[("a/SKILL.md", skill_md())])


@pytest.mark.anyio
async def test_resolve_names_the_version_to_place_and_version_dir_holds_its_skill_md(
    client: anthropic.Anthropic, data_dir: Path, tmp_path: Path
) -> None:
    skill = client.beta.skills.create(files=folder_files(tmp_path / "a", {"SKILL.md": skill_md()}))
    newer = client.beta.skills.versions.create(
        skill.id, files=folder_files(tmp_path / "b", {"SKILL.md": skill_md()})
    )
    store = await open_store(f"sqlite:///{data_dir / 'tether.db'}")
    try:
        latest = await skills.resolve(store, skill.id, None)
        assert latest == skills.SkillVersionRef(
            skill.id, newer.id, "pdf-forms", "Fills PDF forms from JSON.", "pdf-forms"
        )
        assert (
            await skills.resolve(store, skill.id, skill.latest_version_id)
        ).version == skill.latest_version_id
        assert (
            skills.version_dir(data_dir, skill.id, latest.version) / "SKILL.md"
        ).read_bytes() == skill_md()
        with pytest.raises(NotFound):
            await skills.resolve(store, skill.id, "1")
        with pytest.raises(InvalidRequest):
            await skills.resolve(store, skill.id, "../../etc")
        with pytest.raises(skills.AnthropicSkill):
            await skills.resolve(store, "pdf", None)
    finally:
        await store.close()
    with pytest.raises(ValueError):
        skills.version_dir(data_dir, "skill_x/../..", "1")


def test_a_reader_key_reads_skills_and_a_developer_key_builds_them(
    gateway: ServerProcess, api_key: str, answers: StrictAnswers, tmp_path: Path
) -> None:
    made: dict[str, anthropic.Anthropic] = {}
    for role in ("developer", "reader"):
        key = httpx2.post(
            gateway.url + "/v1/organizations/api_keys",
            headers={"x-api-key": api_key},
            json={"name": f"skills {role}", "role": role},
            timeout=30,
        ).json()["key"]
        made[role] = sdk(gateway.url, key, answers)
    folder = folder_files(tmp_path, {"SKILL.md": skill_md()})
    try:
        skill = made["developer"].beta.skills.create(files=folder)
        assert made["reader"].beta.skills.retrieve(skill.id).id == skill.id
        with pytest.raises(anthropic.PermissionDeniedError):
            made["reader"].beta.skills.create(files=folder)
        with pytest.raises(anthropic.PermissionDeniedError):
            made["reader"].beta.skills.delete(skill.id)
        made["developer"].beta.skills.delete(skill.id)
    finally:
        for role_client in made.values():
            role_client.close()
