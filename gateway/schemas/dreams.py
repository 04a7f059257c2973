"""Dream wire shapes (``BetaDream`` and its parts) and the body of ``dreams.create``.

A dream reads one memory store and a set of sessions and writes a reorganised memory store. The
create body is held to the SDK's rules before anything is looked up: ``inputs`` is exactly one
``memory_store`` entry and one ``sessions`` entry (1 to 100 distinct session ids), ``model`` a
1..256-character id given bare or as ``{id, speed}`` with speed ``standard`` only,
``instructions`` 1 to 4,096 characters, and an ``update_existing`` output names the input store.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from gateway.schemas.common import Strict

Body = dict[str, Any]
STATUSES = ("pending", "running", "completed", "failed", "canceled")
"""``BetaDreamStatus``, in lifecycle order."""
FINAL_STATUSES = frozenset({"completed", "failed", "canceled"})
"""Once a dream has one of these its status never changes again."""
MAX_SESSIONS = 100
MAX_INSTRUCTIONS_CHARS = 4096
MAX_MODEL_ID_CHARS = 256
SPEED = "standard"
"""The one speed dreams run at; answers always name it."""

ModelId = Annotated[str, Field(min_length=1, max_length=MAX_MODEL_ID_CHARS)]


def _object_form(value: object) -> object:
    """A bare model id is the object form with the default speed, so both are checked alike."""
    if isinstance(value, str):
        return {"id": value}
    if not isinstance(value, dict):
        raise ValueError("must be a model id or an object with id and speed")
    return value


class MemoryStoreInput(Strict):
    """``BetaDreamMemoryStoreInputParam``."""

    type: Literal["memory_store"]
    memory_store_id: str


class SessionsInput(Strict):
    """``BetaDreamSessionsInputParam``."""

    type: Literal["sessions"]
    session_ids: Annotated[list[str], Field(min_length=1, max_length=MAX_SESSIONS)]

    @field_validator("session_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for session_id in value:
            if session_id in seen:
                raise ValueError(f"{session_id!r} is given twice; each session may be given once")
            seen.add(session_id)
        return value


DreamInput = Annotated[MemoryStoreInput | SessionsInput, Field(discriminator="type")]


class DreamModelConfig(Strict):
    """``BetaDreamModelConfigParam``: the SDK's type allows ``fast``, the API refuses it."""

    id: ModelId
    speed: Literal["standard", "fast"] | None = None

    @field_validator("speed")
    @classmethod
    def _standard_only(cls, value: str | None) -> str | None:
        if value not in (None, SPEED):
            raise ValueError(f"dreams run only at speed {SPEED!r}, not {value!r}")
        return value


class CreateNew(Strict):
    type: Literal["create_new"]


class UpdateExisting(Strict):
    type: Literal["update_existing"]
    memory_store_id: str


OutputBehavior = Annotated[CreateNew | UpdateExisting, Field(discriminator="type")]


class DreamCreate(Strict):
    inputs: list[DreamInput]
    model: Annotated[DreamModelConfig, BeforeValidator(_object_form)]
    instructions: Annotated[str, Field(min_length=1, max_length=MAX_INSTRUCTIONS_CHARS)] | None = None
    output_behavior: OutputBehavior = Field(default_factory=lambda: CreateNew(type="create_new"))

    @field_validator("inputs")
    @classmethod
    def _one_of_each(cls, value: list[MemoryStoreInput | SessionsInput]) -> list[Any]:
        stores = sum(isinstance(entry, MemoryStoreInput) for entry in value)
        sessions = len(value) - stores
        if (stores, sessions) != (1, 1):
            raise ValueError(
                "must be exactly one memory_store entry and exactly one sessions entry, "
                f"not {stores} and {sessions}"
            )
        return value

    @model_validator(mode="after")
    def _writes_its_input(self) -> DreamCreate:
        behavior = self.output_behavior
        if isinstance(behavior, UpdateExisting) and behavior.memory_store_id != self.memory_store_id:
            raise ValueError(
                f"output_behavior.memory_store_id: must be the memory store in inputs "
                f"({self.memory_store_id}), not {behavior.memory_store_id}"
            )
        return self

    @property
    def memory_store_id(self) -> str:
        return next(e.memory_store_id for e in self.inputs if isinstance(e, MemoryStoreInput))

    @property
    def session_ids(self) -> list[str]:
        """Sorted, as answers list them."""
        return sorted(next(e.session_ids for e in self.inputs if isinstance(e, SessionsInput)))


class DreamUsage(Strict):
    """``BetaDreamUsage``."""

    input_tokens: Annotated[int, Field(ge=0)]
    output_tokens: Annotated[int, Field(ge=0)]
    cache_creation_input_tokens: Annotated[int, Field(ge=0)]
    cache_read_input_tokens: Annotated[int, Field(ge=0)]


class DreamOutput(Strict):
    """``BetaDreamOutput``."""

    type: Literal["memory_store"]
    memory_store_id: str


class DreamError(Strict):
    """``BetaDreamErrorObject``."""

    type: str
    message: str


class DreamChanges(Strict):
    """What the runner may change on a dream (``resources.dreams.advance``); each field given
    replaces the stored one."""

    status: Literal["pending", "running", "completed", "failed", "canceled"] | None = None
    session_id: str | None = None
    outputs: Annotated[list[DreamOutput], Field(max_length=1)] | None = None
    usage: DreamUsage | None = None
    error: DreamError | None = None
    ended_at: str | None = None


def empty_usage() -> Body:
    return DreamUsage(
        input_tokens=0, output_tokens=0, cache_creation_input_tokens=0, cache_read_input_tokens=0
    ).model_dump()


def dream_body(dream_id: str, request: DreamCreate, created_at: str) -> Body:
    """A new dream, ``pending``: the stored document is exactly the wire shape. ``inputs`` keep
    the request's order; the session ids are sorted."""
    inputs: list[Body] = [
        {"type": "memory_store", "memory_store_id": entry.memory_store_id}
        if isinstance(entry, MemoryStoreInput)
        else {"type": "sessions", "session_ids": request.session_ids}
        for entry in request.inputs
    ]
    return {
        "type": "dream",
        "id": dream_id,
        "status": "pending",
        "inputs": inputs,
        "model": {"id": request.model.id, "speed": SPEED},
        "instructions": request.instructions,
        "output_behavior": request.output_behavior.model_dump(),
        "outputs": [],
        "usage": empty_usage(),
        "session_id": None,
        "error": None,
        "created_at": created_at,
        "ended_at": None,
        "archived_at": None,
    }
