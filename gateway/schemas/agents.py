"""Agent request bodies, and their resolution into the stored wire shape.

Mirrors ``anthropic.types.beta.BetaManagedAgentsAgent`` and ``agent_create_params``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gateway.schemas.common import (
    AlwaysAllow,
    AlwaysAsk,
    Metadata,
    MetadataPatch,
    Name,
    PermissionPolicy,
    Strict,
)

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
AGENT_TOOLSET = "agent_toolset_20260401"
AGENT_TOOL_NAMES = ("bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search")
MAX_TOOLS = 256
MAX_MCP_SERVERS = 20
MAX_SYSTEM_CHARS = 200_000


class EffortObject(Strict):
    type: Literal["low", "medium", "high", "xhigh", "max"]


class ModelConfig(Strict):
    id: Annotated[str, Field(min_length=1, max_length=256)]
    effort: Literal["low", "medium", "high", "xhigh", "max"] | EffortObject | None = None
    inference_geo: str | None = None
    speed: Literal["standard", "fast"] | None = None


class AgentToolConfig(Strict):
    name: Literal["bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"]
    type: str | None = None
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None

    @model_validator(mode="after")
    def _type_matches_name(self) -> AgentToolConfig:
        if self.type is not None and self.type != self.name:
            raise ValueError(f"type {self.type!r} must equal name {self.name!r}")
        return self


class ToolsetDefaultConfig(Strict):
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None


class AgentToolset(Strict):
    type: Literal["agent_toolset_20260401"]
    configs: list[AgentToolConfig] = Field(default_factory=list)
    default_config: ToolsetDefaultConfig | None = None

    @field_validator("configs")
    @classmethod
    def _unique_names(cls, configs: list[AgentToolConfig]) -> list[AgentToolConfig]:
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError("each tool may be configured only once")
        return configs


class MCPToolConfig(Strict):
    name: Annotated[str, Field(min_length=1, max_length=256)]
    enabled: bool | None = None
    permission_policy: PermissionPolicy | None = None


class MCPToolset(Strict):
    type: Literal["mcp_toolset"]
    mcp_server_name: Name
    configs: list[MCPToolConfig] = Field(default_factory=list)
    default_config: ToolsetDefaultConfig | None = None


class CustomToolInputSchema(Strict):
    type: Literal["object"]
    properties: dict[str, Any] | None = None
    required: list[str] | None = None


class CustomTool(Strict):
    type: Literal["custom"]
    name: str
    description: Annotated[str, Field(max_length=10_000)]
    input_schema: CustomToolInputSchema

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not TOOL_NAME.match(name):
            raise ValueError("must match ^[a-zA-Z0-9_-]{1,64}$")
        return name


Tool = Annotated[AgentToolset | MCPToolset | CustomTool, Field(discriminator="type")]


class URLMCPServer(Strict):
    type: Literal["url"]
    name: Name
    url: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return url


class ServiceAccountIdentity(Strict):
    type: Literal["service_account"]


class AWSRoleIdentity(Strict):
    type: Literal["aws_role"]
    role_arn: Annotated[str, Field(min_length=1)]


ExecutionIdentity = Annotated[ServiceAccountIdentity | AWSRoleIdentity, Field(discriminator="type")]


MAX_SKILLS = 20


class SkillParam(Strict):
    """``BetaManagedAgentsSkillParams``: a custom skill (or an Anthropic one, which Tether
    refuses when it resolves the list), pinned to ``version`` or the latest at that moment."""

    type: Literal["custom", "anthropic"]
    skill_id: Annotated[str, Field(min_length=1, max_length=128)]
    version: Annotated[str, Field(min_length=1, max_length=32)] | None = None


class _AgentFields(Strict):
    """Fields shared by create and update; on update every field is optional."""

    description: Annotated[str, Field(max_length=2048)] | None = None
    system: Annotated[str, Field(max_length=MAX_SYSTEM_CHARS)] | None = None
    execution_identity: ExecutionIdentity | None = None
    multiagent: None = None
    skills: Annotated[list[SkillParam], Field(max_length=MAX_SKILLS)] | None = None


class AgentCreate(_AgentFields):
    name: Name
    model: Annotated[str, Field(min_length=1, max_length=256)] | ModelConfig
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] = Field(default_factory=list)
    mcp_servers: Annotated[list[URLMCPServer], Field(max_length=MAX_MCP_SERVERS)] = Field(
        default_factory=list
    )
    metadata: Metadata = Field(default_factory=dict)


class AgentUpdate(_AgentFields):
    name: Name | None = None
    model: Annotated[str, Field(min_length=1, max_length=256)] | ModelConfig | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    mcp_servers: Annotated[list[URLMCPServer], Field(max_length=MAX_MCP_SERVERS)] | None = None
    metadata: MetadataPatch | None = None
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


def resolve_model(model: str | ModelConfig) -> dict[str, Any]:
    config = ModelConfig(id=model) if isinstance(model, str) else model
    resolved: dict[str, Any] = {"id": config.id}
    if config.effort is not None:
        effort = config.effort if isinstance(config.effort, str) else config.effort.type
        resolved["effort"] = {"type": effort}
    if config.inference_geo is not None:
        resolved["inference_geo"] = config.inference_geo
    if config.speed is not None:
        resolved["speed"] = config.speed
    return resolved


def _policy(policy: Any, default: AlwaysAllow | AlwaysAsk) -> dict[str, str]:
    return (policy or default).model_dump()


def resolve_tools(tools: list[Any], mcp_servers: list[URLMCPServer]) -> list[dict[str, Any]]:
    """Fill in defaults the way the hosted API does: the agent toolset is always_allow,
    MCP toolsets always_ask (new upstream tools never run unapproved)."""
    server_names = [s.name for s in mcp_servers]
    if len(set(server_names)) != len(server_names):
        raise ValueError("mcp_servers: names must be unique")
    referenced = {t.mcp_server_name for t in tools if isinstance(t, MCPToolset)}
    for name in server_names:
        if name not in referenced:
            raise ValueError(f"mcp_servers: server {name!r} is not referenced by any mcp_toolset in tools")
    resolved: list[dict[str, Any]] = []
    custom_names: set[str] = set()
    seen_toolsets: set[str] = set()
    for index, tool in enumerate(tools):
        if isinstance(tool, AgentToolset):
            if AGENT_TOOLSET in seen_toolsets:
                raise ValueError(f"tools.{index}: {AGENT_TOOLSET} may appear only once")
            seen_toolsets.add(AGENT_TOOLSET)
            defaults = tool.default_config or ToolsetDefaultConfig()
            enabled = True if defaults.enabled is None else defaults.enabled
            policy = _policy(defaults.permission_policy, AlwaysAllow(type="always_allow"))
            resolved.append(
                {
                    "type": AGENT_TOOLSET,
                    "default_config": {"enabled": enabled, "permission_policy": policy},
                    "configs": [
                        {
                            "name": c.name,
                            "type": c.name,
                            "enabled": enabled if c.enabled is None else c.enabled,
                            "permission_policy": c.permission_policy.model_dump()
                            if c.permission_policy
                            else policy,
                        }
                        for c in tool.configs
                    ],
                }
            )
        elif isinstance(tool, MCPToolset):
            if tool.mcp_server_name not in server_names:
                raise ValueError(
                    f"tools.{index}.mcp_server_name: {tool.mcp_server_name!r} is not one of mcp_servers"
                )
            key = f"mcp:{tool.mcp_server_name}"
            if key in seen_toolsets:
                raise ValueError(f"tools.{index}: server {tool.mcp_server_name!r} has two mcp_toolsets")
            seen_toolsets.add(key)
            defaults = tool.default_config or ToolsetDefaultConfig()
            enabled = True if defaults.enabled is None else defaults.enabled
            policy = _policy(defaults.permission_policy, AlwaysAsk(type="always_ask"))
            resolved.append(
                {
                    "type": "mcp_toolset",
                    "mcp_server_name": tool.mcp_server_name,
                    "default_config": {"enabled": enabled, "permission_policy": policy},
                    "configs": [
                        {
                            "name": c.name,
                            "enabled": enabled if c.enabled is None else c.enabled,
                            "permission_policy": c.permission_policy.model_dump()
                            if c.permission_policy
                            else policy,
                        }
                        for c in tool.configs
                    ],
                }
            )
        else:
            if tool.name in custom_names:
                raise ValueError(f"tools.{index}.name: custom tool {tool.name!r} is defined twice")
            custom_names.add(tool.name)
            resolved.append(tool.model_dump(exclude_none=True))
    if AGENT_TOOLSET in seen_toolsets and custom_names & set(AGENT_TOOL_NAMES):
        clash = sorted(custom_names & set(AGENT_TOOL_NAMES))[0]
        raise ValueError(f"tools: custom tool {clash!r} collides with the {AGENT_TOOLSET} tool of that name")
    return resolved
