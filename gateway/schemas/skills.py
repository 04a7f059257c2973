"""Skill wire shapes (``BetaSkill``, ``BetaSkillVersion`` and their deleted forms), the form
fields of an upload, and ``SKILL.md``'s YAML front matter with the line of each problem.

A skill's ``name`` becomes a directory in sandboxes and its ``description`` goes into system
prompts, so both are held to the API's rules here, before anything is stored: the name is a
short kebab-case slug without the reserved words, the description plain text without XML tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from gateway.schemas.common import Strict

MAX_NAME_CHARS = 64
MAX_DESCRIPTION_CHARS = 1024
MAX_DISPLAY_NAME_CHARS = 255
RESERVED_WORDS = ("anthropic", "claude")
MAX_FRONT_MATTER_BYTES = 64 * 1024
"""SKILL.md may be large; the block of YAML at its top may not (it is parsed on every upload)."""
_NAME = re.compile(r"^[a-z0-9-]+$", re.ASCII)
_XML_TAG = re.compile(r"<[^<>]*>")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FENCE = re.compile(rb"^---[ \t]*\r?$")


def _check_name(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise ValueError(f"must be at most {MAX_NAME_CHARS} characters, not {len(value)}")
    if not _NAME.match(value):
        raise ValueError(f"{value!r} may contain only lowercase letters, digits and hyphens")
    for word in RESERVED_WORDS:
        if word in value:
            raise ValueError(f"{value!r} contains the reserved word {word!r}")
    return value


def _check_description(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_DESCRIPTION_CHARS:
        raise ValueError(f"must be at most {MAX_DESCRIPTION_CHARS} characters, not {len(value)}")
    if _XML_TAG.search(value):
        raise ValueError("may not contain XML tags")
    return value


def _check_display_name(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    if len(value) > MAX_DISPLAY_NAME_CHARS:
        raise ValueError(f"must be at most {MAX_DISPLAY_NAME_CHARS} characters, not {len(value)}")
    if _CONTROL.search(value):
        raise ValueError("must be a single line without control characters")
    return value


SkillName = Annotated[str, AfterValidator(_check_name)]
SkillDescription = Annotated[str, AfterValidator(_check_description)]
DisplayName = Annotated[str, AfterValidator(_check_display_name)]


class SkillCreateFields(Strict):
    """The form fields of ``POST /v1/skills`` besides its files."""

    display_name: DisplayName | None = None


class FrontMatter(BaseModel):
    """The keys Tether reads; others (``license``, ``allowed-tools``, ``metadata``) are kept in
    the file and not interpreted. Strict, so ``name: 123`` is an error, not ``"123"``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    name: SkillName
    description: SkillDescription


@dataclass(frozen=True)
class SkillMarkdown:
    name: str
    description: str
    name_line: int
    """The line of SKILL.md holding ``name``, for errors about it in a later version."""


class FrontMatterError(ValueError):
    """SKILL.md cannot describe a skill; the message names the line."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"SKILL.md line {line}: {problem}")
        self.line = line


def parse_skill_md(data: bytes) -> SkillMarkdown:
    """Read the ``---``-fenced YAML block at the top of SKILL.md; ``FrontMatterError`` says why not."""
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")
    if not _FENCE.match(lines[0]):
        raise FrontMatterError(1, "must start with YAML front matter: a line '---', the keys, then '---'")
    closing = next((i for i, line in enumerate(lines[1:], start=1) if _FENCE.match(line)), None)
    if closing is None:
        raise FrontMatterError(1, "the front matter opened here is never closed by a line '---'")
    raw = b"\n".join(lines[1:closing])
    if len(raw) > MAX_FRONT_MATTER_BYTES:
        raise FrontMatterError(1, f"the front matter is longer than {MAX_FRONT_MATTER_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrontMatterError(2 + raw[: exc.start].count(b"\n"), "not valid UTF-8") from None
    values, key_lines = _mapping(text)
    try:
        front = FrontMatter.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        key = str(error["loc"][0]) if error["loc"] else ""
        if error["type"] == "missing":
            raise FrontMatterError(1, f"the front matter has no '{key}'") from None
        message = str(error.get("ctx", {}).get("error") or error["msg"].removeprefix("Value error, "))
        raise FrontMatterError(key_lines.get(key, 1), f"{key}: {message}") from None
    return SkillMarkdown(front.name, front.description, key_lines["name"])


def _mapping(text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """The front matter's values and the SKILL.md line of each top-level key (YAML counts from
    0 and the block starts on line 2)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = 2 + mark.line if mark is not None else 1
        raise FrontMatterError(line, f"not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise FrontMatterError(1, f"not valid YAML: {exc}") from None
    if not isinstance(node, yaml.MappingNode) or not isinstance(values, dict):
        line = 2 + node.start_mark.line if node is not None else 1
        raise FrontMatterError(line, "the front matter must be a mapping of keys to values")
    key_lines: dict[str, int] = {}
    for key, _ in node.value:
        line = 2 + key.start_mark.line
        if isinstance(key, yaml.ScalarNode) and key.value in key_lines:
            raise FrontMatterError(line, f"'{key.value}' is given twice")
        if isinstance(key, yaml.ScalarNode):
            key_lines[key.value] = line
    return values, key_lines


SOURCE_CUSTOM = "custom"
SOURCES = frozenset({"custom", "anthropic", "anthropic_example", "plugin"})
"""``BetaSkillSource.type``: Tether holds only ``custom`` skills, the ones uploaded to it."""


def skill_body(skill_id: str, display_name: str, latest_version_id: str, created_at: str) -> dict[str, Any]:
    return {
        "type": "skill",
        "id": skill_id,
        "display_name": display_name,
        "latest_version_id": latest_version_id,
        "source": {"type": SOURCE_CUSTOM},
        "created_at": created_at,
        "updated_at": created_at,
    }


def skill_version_body(
    skill_id: str, version: str, name: str, description: str, created_at: str
) -> dict[str, Any]:
    return {
        "type": "skill_version",
        "id": version,
        "skill_id": skill_id,
        "name": name,
        "description": description,
        "created_at": created_at,
    }


def deleted_skill(skill_id: str) -> dict[str, Any]:
    return {"type": "skill_deleted", "id": skill_id}


def deleted_skill_version(version: str) -> dict[str, Any]:
    return {"type": "skill_version_deleted", "id": version}
