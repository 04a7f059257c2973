"""Skill folders to upload, and a strict check of every answer from ``/v1/skills``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx2
from anthropic._types import FileTypes
from anthropic.lib import files_from_dir
from anthropic.types.beta import BetaSkill
from anthropic.types.beta.beta_deleted_skill import BetaDeletedSkill
from anthropic.types.beta.skills import BetaDeletedSkillVersion, BetaSkillVersion
from pydantic import BaseModel

from gateway.resources import skills

FOLDER = {
    "scripts/run.py": b"#!/usr/bin/env python3\nprint('filled')\n",
    "reference/deep/notes.md": "# Notes \u2014 d\u00e9j\u00e0 vu\n".encode(),
    "assets/blob.bin": bytes(range(256)) * 64,
}


def skill_md(name: str = "pdf-forms", description: str = "Fills PDF forms from JSON.") -> bytes:
    return f"---\nname: {name}\ndescription: {description}\nlicense: MIT\n---\n\n# {name}\n".encode()


def write_folder(root: Path, files: dict[str, bytes], top: str = "pdf_forms") -> Path:
    folder = root / top
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


def folder_files(root: Path, files: dict[str, bytes], top: str = "pdf_forms") -> list[FileTypes]:
    """The folder written under ``root``, as the SDK's ``files_from_dir`` uploads it."""
    return files_from_dir(write_folder(root, files, top))


def _known_fields_only(model: type[BaseModel], raw: Any) -> None:
    assert isinstance(raw, dict)
    assert set(raw) <= set(model.model_fields), (model.__name__, set(raw) - set(model.model_fields))
    for name, field in model.model_fields.items():
        nested = field.annotation
        if name in raw and isinstance(nested, type) and issubclass(nested, BaseModel):
            _known_fields_only(nested, raw[name])


def _expected(method: str, parts: list[str]) -> tuple[type[BaseModel], bool]:
    """The SDK's model for an answer of ``/v1/<parts>``, and whether it comes as a page of them."""
    versions = len(parts) > 2
    model: type[BaseModel] = BetaSkillVersion if versions else BetaSkill
    if len(parts) in (1, 3):
        return model, method == "GET"
    if method == "DELETE":
        return (BetaDeletedSkillVersion if versions else BetaDeletedSkill), False
    return model, False


class StrictAnswers:
    """A response hook checking every answer from ``/v1/skills``: a success validated by the SDK's
    own model (full pydantic validation, not the SDK's lenient construction) with no field, at
    any depth, the model lacks; an error shaped exactly like the API's."""

    def __init__(self) -> None:
        self.checked = 0
        self.problems: list[str] = []

    @classmethod
    @contextmanager
    def checking(cls) -> Iterator[StrictAnswers]:
        """Fails at the end if an answer was malformed, or if none was checked at all."""
        checker = cls()
        yield checker
        assert not checker.problems, checker.problems
        assert checker.checked, "no answer from /v1/skills was checked"

    def __call__(self, response: httpx2.Response) -> None:
        parts = response.request.url.path.strip("/").split("/")[1:]
        if parts[:1] != ["skills"] or (parts[-1] == "content" and response.is_success):
            return
        response.read()
        try:
            raw = response.json()
            if response.is_error:
                assert set(raw) == {"type", "error"} and raw["type"] == "error", raw
                assert set(raw["error"]) == {"type", "message"}, raw
            else:
                model, paged = _expected(response.request.method, parts)
                if paged:
                    assert set(raw) == {"data", "next_page"}, raw
                for item in raw["data"] if paged else [raw]:
                    _known_fields_only(model, item)
                    model.model_validate(item)
            self.checked += 1
        except Exception as exc:
            self.problems.append(f"{response.request.method} {response.request.url.path}: {exc!r}")


def sdk(url: str, key: str, answers: StrictAnswers) -> anthropic.Anthropic:
    http = httpx2.Client(event_hooks={"response": [answers]}, timeout=60)
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, http_client=http)


def on_disk(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def snapshot(data_dir: Path) -> list[Path]:
    """Everything under the skills directory, to show a refused upload left nothing behind."""
    root = skills.skills_dir(data_dir)
    return sorted(root.rglob("*")) if root.exists() else []
