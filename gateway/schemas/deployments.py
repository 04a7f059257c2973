"""Request bodies of ``/v1/deployments``, as ``deployment_create_params`` and
``deployment_update_params`` define them.

Tether runs only what its sessions support: ``user.message`` and ``system.message`` initial
events, and no session resources. The rest of the SDK's shapes parse, then answer a 400 that names them, so a
caller learns what is missing instead of getting a deployment that silently does less.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from gateway.scheduling.cron import Cron, InvalidSchedule
from gateway.schemas.common import Metadata, MetadataPatch, Name, Strict
from gateway.schemas.sessions import (
    AgentReference,
    BudgetLimit,
    SystemMessage,
    UserDefineOutcome,
    UserMessage,
    check_system_message,
)

MAX_INITIAL_EVENTS = 50
MAX_VAULT_IDS = 50


class Schedule(Strict):
    type: Literal["cron"]
    expression: Annotated[str, Field(min_length=1, max_length=256)]
    timezone: Annotated[str, Field(min_length=1, max_length=64)]

    @model_validator(mode="after")
    def _parses(self) -> Schedule:
        try:
            self.cron()
        except InvalidSchedule as exc:
            raise ValueError(str(exc)) from None
        return self

    def cron(self) -> Cron:
        return Cron.parse(self.expression, self.timezone)


InitialEvents = Annotated[
    list[Annotated[UserMessage | SystemMessage | UserDefineOutcome, Field(discriminator="type")]],
    Field(min_length=1, max_length=MAX_INITIAL_EVENTS),
]


def _no_resources(resources: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if resources:
        raise ValueError("session resources are not supported by Tether yet")
    return resources


Resources = Annotated[list[dict[str, Any]] | None, AfterValidator(_no_resources)]


class PinnedAgent(AgentReference):
    """An agent object on a deployment names its version too (an id alone pins the latest)."""

    version: Annotated[int, Field(ge=1, le=2**31 - 1)]


AgentParam = Annotated[str, Field(min_length=1)] | PinnedAgent
Description = Annotated[str, Field(max_length=2048)]
VaultIds = Annotated[list[str], Field(max_length=MAX_VAULT_IDS)]


class DeploymentCreate(Strict):
    agent: AgentParam
    environment_id: Annotated[str, Field(min_length=1)]
    initial_events: InitialEvents
    name: Name
    description: Description | None = None
    metadata: Metadata = Field(default_factory=dict)
    schedule: Schedule | None = None
    vault_ids: VaultIds = Field(default_factory=list)
    resources: Resources = None
    budget: BudgetLimit | None = None

    @model_validator(mode="after")
    def _system_message_placement(self) -> DeploymentCreate:
        _check_initial_events(self.initial_events)
        return self


class DeploymentUpdate(Strict):
    """Omitted fields are kept; ``model_fields_set`` tells omitted from null."""

    agent: AgentParam | None = None
    environment_id: Annotated[str, Field(min_length=1)] | None = None
    initial_events: InitialEvents | None = None
    name: Name | None = None
    description: Description | None = None
    metadata: MetadataPatch | None = None
    schedule: Schedule | None = None
    vault_ids: VaultIds | None = None
    resources: Resources = None
    budget: BudgetLimit | None = None

    @model_validator(mode="after")
    def _system_message_placement(self) -> DeploymentUpdate:
        _check_initial_events(self.initial_events or [])
        return self


def _check_initial_events(events: list[UserMessage | SystemMessage | UserDefineOutcome]) -> None:
    check_system_message(events, "initial_events")
    if sum(isinstance(event, UserDefineOutcome) for event in events) > 1:
        raise ValueError(
            "initial_events: at most one user.define_outcome (a session works towards one at a time)"
        )


def event_bodies(events: list[UserMessage | SystemMessage | UserDefineOutcome]) -> list[dict[str, Any]]:
    return [event.model_dump(exclude_none=True) for event in events]
