"""Session request bodies and the client events that can be posted to a session.

Mirrors ``session_create_params``, ``session_update_params`` and
``sessions/beta_managed_agents_event_params``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from gateway.schemas.agents import MAX_MCP_SERVERS, MAX_TOOLS, Tool, URLMCPServer
from gateway.schemas.common import Metadata, MetadataPatch, Strict
from gateway.schemas.session_resources import MAX_RESOURCES, ResourceParams

MAX_EVENTS_PER_POST = 100
MAX_VAULTS = 20
MAX_TEXT_CHARS = 1_000_000


class TextBlock(Strict):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class _Source(Strict):
    type: Literal["base64", "url", "file", "text"]
    data: str | None = None
    media_type: str | None = None
    url: str | None = None
    file_id: str | None = None


class ImageBlock(Strict):
    type: Literal["image"]
    source: _Source

    @field_validator("source")
    @classmethod
    def _kind(cls, source: _Source) -> _Source:
        return _check_source(
            source, {"base64": ("data", "media_type"), "url": ("url",), "file": ("file_id",)}
        )


class DocumentBlock(Strict):
    type: Literal["document"]
    source: _Source
    title: str | None = None
    context: str | None = None

    @field_validator("source")
    @classmethod
    def _kind(cls, source: _Source) -> _Source:
        return _check_source(
            source,
            {
                "base64": ("data", "media_type"),
                "text": ("data", "media_type"),
                "url": ("url",),
                "file": ("file_id",),
            },
        )


def _check_source(source: _Source, required: dict[str, tuple[str, ...]]) -> _Source:
    if source.type not in required:
        raise ValueError(f"source type {source.type!r} is not allowed here")
    for field in required[source.type]:
        if getattr(source, field) is None:
            raise ValueError(f"a {source.type} source needs {field!r}")
    return source


class SearchResultBlock(Strict):
    type: Literal["search_result"]
    source: str
    title: str
    content: list[TextBlock]
    citations: dict[str, bool] | None = None


MessageBlock = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]
ResultBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | SearchResultBlock, Field(discriminator="type")
]


class UserMessage(Strict):
    type: Literal["user.message"]
    content: Annotated[list[MessageBlock], Field(min_length=1)]


class UserInterrupt(Strict):
    type: Literal["user.interrupt"]
    session_thread_id: str | None = None


class UserToolConfirmation(Strict):
    type: Literal["user.tool_confirmation"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    result: Literal["allow", "deny"]
    deny_message: Annotated[str, Field(max_length=10_000)] | None = None
    session_thread_id: str | None = None


class UserCustomToolResult(Strict):
    type: Literal["user.custom_tool_result"]
    custom_tool_use_id: Annotated[str, Field(min_length=1)]
    content: list[ResultBlock] | None = None
    is_error: bool | None = None
    session_thread_id: str | None = None


class SystemText(Strict):
    type: Literal["text"]
    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]


class SystemMessage(Strict):
    """Privileged context for the turn it accompanies and every later one: a ``role: "system"``
    message placed right after that input in the conversation (see ``harness.context``)."""

    type: Literal["system.message"]
    content: Annotated[list[SystemText], Field(min_length=1)]


class TextRubric(Strict):
    type: Literal["text"]
    content: Annotated[str, Field(min_length=1, max_length=262_144)]


class FileRubric(Strict):
    """An uploaded text, markdown or PDF file, shown to the grader as a document."""

    type: Literal["file"]
    file_id: Annotated[str, Field(min_length=1)]


class UserDefineOutcome(Strict):
    """Work towards ``description`` until a grader, shown only the rubric and the work, is
    satisfied (or ``max_iterations`` evaluations have run); see ``harness.outcomes``."""

    type: Literal["user.define_outcome"]
    description: Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS)]
    rubric: Annotated[TextRubric | FileRubric, Field(discriminator="type")]
    max_iterations: Annotated[int, Field(ge=1, le=20)] | None = None


ACCOMPANIED = ("user.message", "user.custom_tool_result")
"""What a ``system.message`` may follow in one request (``user.tool_result`` is not accepted)."""


ClientEvent = Annotated[
    UserMessage
    | UserInterrupt
    | UserToolConfirmation
    | UserCustomToolResult
    | SystemMessage
    | UserDefineOutcome,
    Field(discriminator="type"),
]


def check_system_message(events: Sequence[object], field: str = "events") -> None:
    """At most one ``system.message`` per request, last, right after the input it accompanies."""
    for index, event in enumerate(events):
        if getattr(event, "type", None) != "system.message":
            continue
        if index != len(events) - 1:
            raise ValueError(f"{field}.{index}: a system.message must be the request's last event")
        before = getattr(events[index - 1], "type", None) if index else None
        if before not in ACCOMPANIED:
            raise ValueError(
                f"{field}.{index}: a system.message must directly follow the "
                f"{' or '.join(ACCOMPANIED)} it accompanies"
            )


def file_references(events: Sequence[object]) -> list[tuple[str, str]]:
    """``(block type, file_id)`` for each ``file`` source in the events' content, and each file
    rubric (read as a document)."""
    blocks: list[tuple[str, str]] = [
        (block.type, block.source.file_id)
        for event in events
        for block in getattr(event, "content", None) or ()
        if isinstance(block, ImageBlock | DocumentBlock)
        and block.source.file_id is not None
        and block.source.type == "file"
    ]
    return blocks + [
        ("document", event.rubric.file_id)
        for event in events
        if isinstance(event, UserDefineOutcome) and isinstance(event.rubric, FileRubric)
    ]


class SendEvents(Strict):
    events: Annotated[list[ClientEvent], Field(min_length=1, max_length=MAX_EVENTS_PER_POST)]

    @model_validator(mode="after")
    def _system_message_placement(self) -> SendEvents:
        check_system_message(self.events)
        return self


class Money(Strict):
    """``BetaMonetaryAmount``: whole minor units (cents) as a string, no leading zeros."""

    amount: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,15}$")]
    currency: Literal["USD"]


class BudgetLimit(Strict):
    """``BetaManagedAgentsBudgetLimitParam``: a hard ceiling on the session's list cost."""

    type: Literal["limit"]
    max_list_cost: Money


class AgentReference(Strict):
    type: Literal["agent"]
    id: Annotated[str, Field(min_length=1)]
    version: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None


class SessionCreate(Strict):
    agent: Annotated[str, Field(min_length=1)] | AgentReference
    environment_id: Annotated[str, Field(min_length=1)]
    title: Annotated[str, Field(max_length=512)] | None = None
    metadata: Metadata = Field(default_factory=dict)
    initial_events: Annotated[list[UserMessage], Field(max_length=MAX_EVENTS_PER_POST)] = Field(
        default_factory=list
    )
    vault_ids: Annotated[list[str], Field(max_length=MAX_VAULTS)] = Field(default_factory=list)
    resources: Annotated[list[ResourceParams], Field(max_length=MAX_RESOURCES)] = Field(default_factory=list)
    budget: BudgetLimit | None = None


class SessionAgentUpdate(Strict):
    """``BetaManagedAgentsSessionAgentUpdateParam``: only ``tools`` and ``mcp_servers`` change
    mid-session, each replaced whole when given."""

    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    mcp_servers: Annotated[list[URLMCPServer], Field(max_length=MAX_MCP_SERVERS)] | None = None


class SessionUpdate(Strict):
    agent: SessionAgentUpdate | None = None
    title: Annotated[str, Field(max_length=512)] | None = None
    metadata: MetadataPatch | None = None
    vault_ids: Annotated[list[str], Field(max_length=MAX_VAULTS)] | None = None
    budget: BudgetLimit | None = None
    """Omitted: kept; null: removed (for good); an object: replaces a budget the session has."""
