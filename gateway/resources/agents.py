"""Agents: every update makes a new immutable version; ``version`` gives optimistic concurrency."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from gateway import ids
from gateway.errors import Conflict, InvalidRequest, NotFound
from gateway.resources import agent_settings, common, skills
from gateway.schemas.agents import (
    AgentCreate,
    AgentUpdate,
    SkillParam,
    Tool,
    URLMCPServer,
    resolve_model,
    resolve_tools,
)
from gateway.schemas.common import apply_metadata_patch
from gateway.store.base import Body, Store

KIND = "agent"
DEFAULT_IDENTITY = {"type": "service_account"}
_TOOL: TypeAdapter[Any] = TypeAdapter(Tool)


def _tools(tools: list[Any], servers: list[URLMCPServer]) -> list[Body]:
    try:
        return resolve_tools(tools, servers)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


async def resolve_skills(store: Store, requested: list[SkillParam]) -> list[Body]:
    """Each skill pinned to a version (the newest when none is named), as the agent stores it.
    Anthropic-provided skills cannot be served here; two skills of one name would share a folder."""
    resolved: list[Body] = []
    names: dict[str, str] = {}
    for item in requested:
        if item.type == "anthropic":
            raise InvalidRequest(
                f"skills: {item.skill_id!r} is an Anthropic-provided skill, which Tether cannot serve; "
                "upload its folder with skills.create and use it as a custom skill"
            )
        try:
            ref = await skills.resolve(store, item.skill_id, item.version)
        except NotFound as exc:
            raise InvalidRequest(f"skills: {exc}") from None
        if ref.name in names:
            raise InvalidRequest(f"skills: {item.skill_id} and {names[ref.name]} are both named {ref.name!r}")
        names[ref.name] = item.skill_id
        resolved.append({"type": "custom", "skill_id": ref.skill_id, "version": ref.version})
    return resolved


async def create(store: Store, request: AgentCreate) -> Body:
    agent_settings.parse(request.metadata)
    body = agent_body(request, ids.new_id(ids.AGENT), await resolve_skills(store, request.skills or []))
    await store.insert_agent(body)
    return body


def agent_body(request: AgentCreate, agent_id: str, pinned: list[Body]) -> Body:
    """Version 1 of an agent, not stored: ``create``'s, and the gateway's own agents' (a dream's
    session runs one that is never an API object)."""
    moment = ids.timestamp()
    return {
        "type": "agent",
        "id": agent_id,
        "name": request.name,
        "description": request.description,
        "system": request.system,
        "model": resolve_model(request.model),
        "tools": _tools(request.tools, request.mcp_servers),
        "mcp_servers": [s.model_dump() for s in request.mcp_servers],
        "skills": pinned,
        "metadata": request.metadata,
        "execution_identity": (
            request.execution_identity.model_dump() if request.execution_identity else DEFAULT_IDENTITY
        ),
        "multiagent": None,
        "version": 1,
        "created_at": moment,
        "updated_at": moment,
        "archived_at": None,
    }


async def get(store: Store, agent_id: str, version: int | None = None) -> Body:
    body = (
        await store.get_agent_version(agent_id, version)
        if version is not None
        else await store.get(KIND, agent_id)
    )
    if body is None:
        raise NotFound("agent" if version is None else f"agent version {version} of", agent_id)
    return body


def _apply(current: Body, request: AgentUpdate, skills: list[Body] | None = None) -> Body:
    if request.version is not None and request.version != current["version"]:
        raise Conflict(
            f"agent {current['id']} is at version {current['version']}, not {request.version}; "
            "retrieve it and retry"
        )
    if current.get("archived_at"):
        raise InvalidRequest(f"agent {current['id']} is archived and cannot be updated")
    updated = dict(current)
    fields = request.model_fields_set - {"version"}
    for name in ("name", "description", "system"):
        if name in fields:
            if name == "name" and request.name is None:
                raise InvalidRequest("name: may not be null")
            updated[name] = getattr(request, name)
    if "model" in fields:
        if request.model is None:
            raise InvalidRequest("model: may not be null")
        updated["model"] = resolve_model(request.model)
    if "execution_identity" in fields:
        identity = request.execution_identity
        updated["execution_identity"] = identity.model_dump() if identity else DEFAULT_IDENTITY
    if skills is not None:
        updated["skills"] = skills
    if "metadata" in fields:
        updated["metadata"] = apply_metadata_patch(current["metadata"], request.metadata or {})
        agent_settings.parse(updated["metadata"])
    if "tools" in fields or "mcp_servers" in fields:
        updated["tools"], updated["mcp_servers"] = replace_tools(
            current,
            (request.tools or []) if "tools" in fields else None,
            (request.mcp_servers or []) if "mcp_servers" in fields else None,
        )
    if updated == current:
        return current
    updated["version"] = current["version"] + 1
    updated["updated_at"] = ids.timestamp()
    return updated


def replace_tools(
    current: Body, tools: list[Any] | None, servers: list[URLMCPServer] | None
) -> tuple[list[Body], list[Body]]:
    """``tools`` and ``mcp_servers`` of ``current`` (an agent, or a session's snapshot of one)
    with either list replaced whole (None keeps it), resolved and checked together."""
    if servers is None:
        servers = [URLMCPServer.model_validate(s) for s in current["mcp_servers"]]
    if tools is None:
        tools = [_reparse_tool(t) for t in current["tools"]]
    return _tools(tools, servers), [s.model_dump() for s in servers]


def _reparse_tool(stored: Body) -> Any:
    return _TOOL.validate_python(stored)


async def update(store: Store, agent_id: str, request: AgentUpdate) -> Body:
    pinned = (
        await resolve_skills(store, request.skills or []) if "skills" in request.model_fields_set else None
    )
    body = await store.update_agent(agent_id, lambda current: _apply(current, request, pinned))
    if body is None:
        raise NotFound("agent", agent_id)
    return body


async def archive(store: Store, agent_id: str) -> Body:
    return await common.archive(store, KIND, agent_id)
