"""``client.beta.dreams`` against a gateway process, and the lifecycle a dream runner drives.

A dream is created ``pending`` once its memory store (present, not archived) and sessions
(present, each named in a 400 when not) are found, with the model always answered as an object
at speed ``standard`` and the session ids sorted; the gateway's runner then starts it at once:
``running``, with an output store and a session of its own. Dreams are listed newest first,
filtered by time and status, archived only once final, canceled only while not completed or
failed. ``advance`` (the runner's way in) moves a dream forward and never out of a final status.
Every answer must parse as the SDK's own type with no field it lacks (``support.strict_answers``).

The runner moves dreams by itself, so the dreams here read a store whose dreams' sessions wait
at a gate of the scripted model (``held``): each stays ``running`` until the test moves it
(``advance``, cancel). Only a gateway whose runner never gets to a dream shows it ``pending``
after its create answer (the in-process tests at the end).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.types.beta import BetaDream
from anthropic.types.beta.beta_dream_status import BetaDreamStatus
from starlette.applications import Starlette

from gateway.api import dreams as dream_routes
from gateway.api.errors import HANDLERS
from gateway.resources import dreams, memory_stores
from gateway.resources.dreams import InvalidTransition
from gateway.schemas.memory_stores import MemoryStoreCreate
from gateway.store import open_store
from gateway.store.base import Body, Store
from tests.conftest import Scripts, gateway_data_dir
from tests.support.memory_stores import error_of
from tests.support.processes import ServerProcess
from tests.support.self_hosted import eventually
from tests.support.strict_answers import StrictAnswers, sdk

pytestmark = pytest.mark.anyio
MODEL = "claude-sonnet-4-6"
USAGE = {
    "input_tokens": 10,
    "output_tokens": 5,
    "cache_creation_input_tokens": 2,
    "cache_read_input_tokens": 1,
}


def _expected(method: str, parts: list[str]) -> tuple[Any, bool]:
    return BetaDream, parts == ["dreams"] and method == "GET"


@pytest.fixture
def answers() -> Iterator[StrictAnswers]:
    with StrictAnswers.checking("dreams", _expected) as checker:
        yield checker


@pytest.fixture
def client(gateway: ServerProcess, api_key: str, answers: StrictAnswers) -> Iterator[anthropic.Anthropic]:
    with sdk(gateway.url, api_key, answers) as client:
        yield client


@pytest.fixture(scope="module")
def session_ids(gateway: ServerProcess, api_key: str) -> list[str]:
    """Three idle sessions for dreams to read, newest first."""
    with anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0) as plain:
        agent = plain.beta.agents.create(name="dreamer", model=MODEL)
        environment = plain.beta.environments.create(name="dreams-" + secrets.token_hex(3))
        made = [plain.beta.sessions.create(agent=agent.id, environment_id=environment.id) for _ in range(3)]
    return [session.id for session in reversed(made)]


@dataclass
class Held:
    """A memory store whose dreams' sessions wait at the scripted model's gate: its dreams stay
    ``running`` (their runner cannot end them) until the test moves them or the gate opens."""

    store_id: str
    name: str
    gate: str
    model_url: str

    def arrived(self) -> None:
        """Until a dream's session is waiting for its model's answer."""
        answer = httpx2.get(f"{self.model_url}/_gates/{self.gate}/arrived", timeout=40)
        assert answer.status_code == 204, "no dream's session called its model"

    def open(self) -> None:
        httpx2.post(f"{self.model_url}/_gates/{self.gate}/open").raise_for_status()


@pytest.fixture
def held(client: anthropic.Anthropic, scripts: Scripts, model_server: ServerProcess) -> Iterator[Held]:
    gate = "dream-api-" + secrets.token_hex(6)
    marker = scripts.add([{"hold": gate, "content": [{"type": "text", "text": "Reorganised."}]}])
    # A dream's system prompt names the store it writes ("<name> (dream)", or the input itself).
    store = client.beta.memory_stores.create(name=f"dreamt on {marker}")
    held = Held(store.id, store.name, gate, model_server.url)
    yield held
    held.open()  # the test's dreams may end now


@pytest.fixture
def store_id(held: Held) -> str:
    return held.store_id


def _usage_of(session_id: str, client: anthropic.Anthropic) -> dict[str, int]:
    """A dream's usage as its session's shows it."""
    usage = client.beta.sessions.retrieve(session_id).usage
    creation = usage.cache_creation
    created = (
        (creation.ephemeral_5m_input_tokens or 0) + (creation.ephemeral_1h_input_tokens or 0)
        if creation
        else 0
    )
    return {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": usage.cache_read_input_tokens or 0,
    }


def _just_before(moment: datetime) -> datetime:
    return moment - timedelta(microseconds=1)


def _inputs(store_id: str, session_ids: list[str]) -> list[Any]:
    return [
        {"type": "memory_store", "memory_store_id": store_id},
        {"type": "sessions", "session_ids": session_ids},
    ]


@pytest.fixture
def dream(client: anthropic.Anthropic, store_id: str, session_ids: list[str]) -> BetaDream:
    return client.beta.dreams.create(inputs=_inputs(store_id, session_ids[:1]), model=MODEL)


@pytest.fixture
async def gateway_store(gateway: ServerProcess) -> AsyncIterator[Store]:
    """The gateway's own database, as its dream runner would reach it."""
    store = await open_store(f"sqlite:///{gateway_data_dir(gateway) / 'tether.db'}")
    try:
        yield store
    finally:
        await store.close()


def test_a_dream_is_created_pending_with_the_model_as_an_object_and_the_defaults(
    client: anthropic.Anthropic, held: Held, session_ids: list[str]
) -> None:
    store_id = held.store_id
    created = client.beta.dreams.create(inputs=_inputs(store_id, session_ids), model=MODEL)
    assert created.id.startswith("drm_") and (created.type, created.status) == ("dream", "pending")
    assert [i.model_dump() for i in created.inputs] == _inputs(store_id, sorted(session_ids))
    assert (created.model.id, created.model.speed) == (MODEL, "standard")
    assert created.instructions is None and created.output_behavior.type == "create_new"
    assert created.outputs == [] and created.usage.model_dump() == dict.fromkeys(USAGE, 0)
    assert (created.session_id, created.ended_at, created.error, created.archived_at) == (None,) * 4
    # Then the runner has started it: running in a session of its own, writing a new store.
    running = client.beta.dreams.retrieve(created.id)
    assert running.status == "running" and running.session_id is not None and len(running.outputs) == 1
    output = running.outputs[0]
    assert running.model_copy(update={"status": "pending", "session_id": None, "outputs": []}) == created
    assert output.type == "memory_store" and output.memory_store_id != store_id
    assert client.beta.memory_stores.retrieve(output.memory_store_id).name == f"{held.name} (dream)"
    session = client.beta.sessions.retrieve(running.session_id)
    assert session.metadata == {"tether_dream_id": created.id}
    assert [(r.type, getattr(r, "memory_store_id", None)) for r in session.resources] == [
        ("memory_store", output.memory_store_id)
    ]


@pytest.mark.parametrize(
    "model", [{"id": MODEL}, {"id": MODEL, "speed": "standard"}, {"id": MODEL, "speed": None}]
)
def test_the_object_form_of_the_model_and_the_optional_fields_are_kept(
    client: anthropic.Anthropic, store_id: str, session_ids: list[str], model: Any
) -> None:
    created = client.beta.dreams.create(
        inputs=list(reversed(_inputs(store_id, session_ids[:2]))),
        model=model,
        instructions="i" * 4096,
        output_behavior={"type": "update_existing", "memory_store_id": store_id},
    )
    assert (created.model.id, created.model.speed, created.instructions) == (MODEL, "standard", "i" * 4096)
    assert created.output_behavior.model_dump() == {"type": "update_existing", "memory_store_id": store_id}
    assert [i.type for i in created.inputs] == ["sessions", "memory_store"]  # the request's order
    client.beta.dreams.cancel(created.id)  # frees the store for the next update_existing dream


STORE = {"type": "memory_store", "memory_store_id": "memstore_x"}
SESSIONS = {"type": "sessions", "session_ids": ["sesn_x"]}
REFUSED = [
    ({"inputs": [STORE]}, "inputs"),
    ({"inputs": [SESSIONS]}, "inputs"),
    ({"inputs": [STORE, STORE, SESSIONS]}, "inputs"),
    ({"inputs": [STORE, SESSIONS, SESSIONS]}, "inputs"),
    ({"inputs": [STORE, {"type": "sessions", "session_ids": []}]}, "session_ids"),
    ({"inputs": [STORE, {"type": "sessions", "session_ids": [f"s{i}" for i in range(101)]}]}, "session_ids"),
    ({"inputs": [STORE, {"type": "sessions", "session_ids": ["sesn_a", "sesn_a"]}]}, "twice"),
    ({"inputs": [STORE, {"type": "files", "file_ids": []}]}, "inputs.1"),
    ({"inputs": [{**STORE, "colour": "red"}, SESSIONS]}, "colour"),
    ({"model": ""}, "model"),
    ({"model": "m" * 257}, "model"),
    ({"model": {"id": ""}}, "model.id"),
    ({"model": {"speed": "standard"}}, "model.id"),
    ({"model": {"id": MODEL, "speed": "fast"}}, "model.speed"),
    ({"model": {"id": MODEL, "effort": "high"}}, "model.effort"),
    ({"instructions": ""}, "instructions"),
    ({"instructions": "i" * 4097}, "instructions"),
    ({"output_behavior": {"type": "update_existing", "memory_store_id": "memstore_y"}}, "memory_store_id"),
    ({"output_behavior": {"type": "overwrite"}}, "output_behavior"),
    ({"output_behavior": None}, "output_behavior"),
    ({"extra_body": {"colour": "red"}}, "colour"),
]


@pytest.mark.parametrize(("fields", "named"), REFUSED)
def test_a_bad_create_body_is_a_400_naming_the_field(
    client: anthropic.Anthropic, fields: dict[str, Any], named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.dreams.create(**{"inputs": [STORE, SESSIONS], "model": MODEL, **fields})
    error = error_of(refused.value)
    assert error["type"] == "invalid_request_error" and named in error["message"], error


def test_up_to_100_session_ids_pass_validation_and_each_missing_one_is_named(
    client: anthropic.Anthropic, store_id: str, session_ids: list[str]
) -> None:
    missing = [f"sesn_missing{i:03}" for i in range(99)]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.dreams.create(inputs=_inputs(store_id, [session_ids[0], *missing]), model=MODEL)
    message = error_of(refused.value)["message"]
    assert all(session_id in message for session_id in missing) and session_ids[0] not in message


def test_an_unknown_memory_store_is_a_404(client: anthropic.Anthropic, session_ids: list[str]) -> None:
    with pytest.raises(anthropic.NotFoundError) as refused:
        client.beta.dreams.create(inputs=_inputs("memstore_nowhere", session_ids[:1]), model=MODEL)
    assert "memstore_nowhere" in error_of(refused.value)["message"]


def test_an_archived_memory_store_is_not_dreamt_on(
    client: anthropic.Anthropic, store_id: str, session_ids: list[str]
) -> None:
    client.beta.memory_stores.archive(store_id)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.dreams.create(inputs=_inputs(store_id, session_ids[:1]), model=MODEL)
    assert "archived" in error_of(refused.value)["message"]


def test_one_update_existing_dream_at_a_time_per_memory_store(
    client: anthropic.Anthropic, store_id: str, session_ids: list[str]
) -> None:
    def update_existing() -> BetaDream:
        return client.beta.dreams.create(
            inputs=_inputs(store_id, session_ids[:1]),
            model=MODEL,
            output_behavior={"type": "update_existing", "memory_store_id": store_id},
        )

    first = update_existing()
    with pytest.raises(anthropic.ConflictError) as refused:
        update_existing()
    assert first.id in error_of(refused.value)["message"]
    create_new = client.beta.dreams.create(inputs=_inputs(store_id, session_ids[:1]), model=MODEL)
    assert create_new.status == "pending"
    client.beta.dreams.cancel(first.id)
    assert update_existing().status == "pending"


def test_dreams_are_listed_newest_first_in_pages_within_exclusive_time_bounds(
    client: anthropic.Anthropic, store_id: str, session_ids: list[str]
) -> None:
    made = [
        client.beta.dreams.create(inputs=_inputs(store_id, session_ids[:1]), model=MODEL) for _ in range(5)
    ]
    bounds: dict[str, Any] = {"created_at_gt": made[0].created_at, "created_at_lt": made[-1].created_at}
    first = client.beta.dreams.list(limit=2, **bounds)
    assert [d.id for d in first.data] == [made[3].id, made[2].id] and first.next_page
    assert [d.id for d in client.beta.dreams.list(limit=2, **bounds)] == [made[3].id, made[2].id, made[1].id]
    newest = client.beta.dreams.list(created_at_gt=made[0].created_at)
    assert [d.id for d in newest.data] == [d.id for d in reversed(made[1:])] and newest.next_page is None


async def test_statuses_filter_the_list_and_archived_dreams_are_left_out_unless_asked_for(
    client: anthropic.Anthropic, store_id: str, session_ids: list[str], gateway_store: Store
) -> None:
    made = [
        client.beta.dreams.create(inputs=_inputs(store_id, session_ids[:1]), model=MODEL) for _ in range(4)
    ]
    failed, running, canceled, completed = (d.id for d in made)
    await dreams.advance(gateway_store, failed, status="failed", error={"type": "test", "message": "failed"})
    client.beta.dreams.cancel(canceled)
    await dreams.advance(gateway_store, completed, status="completed")
    client.beta.dreams.archive(completed)

    def listed(**query: Any) -> list[str]:
        return [
            d.id for d in client.beta.dreams.list(created_at_gt=_just_before(made[0].created_at), **query)
        ]

    assert listed() == [canceled, running, failed]  # the completed one is archived
    assert listed(include_archived=True) == [completed, canceled, running, failed]
    assert listed(statuses=["running"]) == [running]
    assert listed(statuses=["pending", "running", "failed"]) == [running, failed]
    assert listed(statuses=["canceled", "completed"], include_archived=True) == [completed, canceled]
    assert listed(statuses=["completed", "pending"]) == []


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 101},
        {"page": "not-a-cursor"},
        {"statuses": ["dreaming"]},
        {"created_at_gt": "soon"},
    ],
)
def test_a_bad_list_query_is_a_400(client: anthropic.Anthropic, query: dict[str, Any]) -> None:
    with pytest.raises(anthropic.BadRequestError):
        client.beta.dreams.list(**query)


def test_a_running_dream_is_canceled_once_and_then_archived_once(
    client: anthropic.Anthropic, dream: BetaDream, held: Held
) -> None:
    held.arrived()
    running = client.beta.dreams.retrieve(dream.id)
    assert running.status == "running" and running.session_id is not None
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.dreams.archive(dream.id)
    assert "cancel" in error_of(refused.value)["message"]
    canceled = client.beta.dreams.cancel(dream.id)
    assert canceled.status == "canceled" and canceled.ended_at is not None and canceled.archived_at is None
    assert canceled.model_copy(update={"status": "running", "ended_at": None}) == running
    assert client.beta.dreams.cancel(dream.id) == canceled  # unchanged
    archived = client.beta.dreams.archive(dream.id)
    assert archived.archived_at is not None and archived.model_copy(update={"archived_at": None}) == canceled
    assert client.beta.dreams.archive(dream.id) == archived  # idempotent
    # The cancel interrupts the dream's session; once it stops, the dream shows its usage.
    session_id = running.session_id
    eventually(lambda: client.beta.sessions.retrieve(session_id).status == "idle", "the session to stop")
    retrieved = client.beta.dreams.retrieve(dream.id)
    assert retrieved.usage.model_dump() == _usage_of(session_id, client)
    assert retrieved.model_copy(update={"usage": archived.usage}) == archived
    since = _just_before(dream.created_at)
    assert dream.id not in [d.id for d in client.beta.dreams.list(created_at_gt=since)]
    assert dream.id in [d.id for d in client.beta.dreams.list(created_at_gt=since, include_archived=True)]


@pytest.mark.parametrize("final", ["completed", "failed"])
async def test_a_completed_or_failed_dream_is_not_canceled(
    client: anthropic.Anthropic, dream: BetaDream, gateway_store: Store, final: str
) -> None:
    await dreams.advance(gateway_store, dream.id, status=final)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.beta.dreams.cancel(dream.id)
    assert final in error_of(refused.value)["message"]
    assert client.beta.dreams.retrieve(dream.id).status == final


async def test_advance_moves_a_dream_forward_and_ends_it(
    client: anthropic.Anthropic, dream: BetaDream, gateway_store: Store, store_id: str
) -> None:
    output = [{"type": "memory_store", "memory_store_id": store_id}]
    running = client.beta.dreams.retrieve(dream.id)  # the runner advanced it to running
    assert (running.status, running.ended_at) == ("running", None) and running.session_id is not None
    await dreams.advance(gateway_store, dream.id, status=None, outputs=output)
    with pytest.raises(InvalidTransition):
        await dreams.advance(gateway_store, dream.id, status="pending")
    # The usage with the final status: while running, the runner records its session's instead.
    failed = await dreams.advance(
        gateway_store, dream.id, status="failed", error={"type": "timeout", "message": "slow"}, usage=USAGE
    )
    answered = client.beta.dreams.retrieve(dream.id)
    assert answered.status == "failed" and answered.ended_at is not None
    assert answered.error is not None and (answered.error.type, answered.error.message) == ("timeout", "slow")
    assert [o.model_dump() for o in answered.outputs] == output and answered.usage.model_dump() == USAGE
    assert datetime.fromisoformat(failed["ended_at"]) == answered.ended_at
    assert answered.session_id == running.session_id


async def test_advance_never_changes_a_final_dream_but_a_canceled_ones_usage(
    client: anthropic.Anthropic, store_id: str, session_ids: list[str], gateway_store: Store
) -> None:
    made = [
        client.beta.dreams.create(inputs=_inputs(store_id, session_ids[:1]), model=MODEL) for _ in range(2)
    ]
    completed, canceled = (d.id for d in made)
    done = await dreams.advance(gateway_store, completed, status="completed", usage=USAGE)
    assert (
        await dreams.advance(gateway_store, completed, status="running", usage=dict.fromkeys(USAGE, 99))
        == done
    )
    stopped = client.beta.dreams.cancel(canceled)
    assert stopped.session_id is not None
    later = await dreams.advance(
        gateway_store, canceled, status="completed", session_id="sesn_late", usage=USAGE
    )
    assert (later["status"], later["session_id"], later["usage"]) == ("canceled", stopped.session_id, USAGE)
    answered = client.beta.dreams.retrieve(completed)
    assert answered.status == "completed" and answered.usage.model_dump() == USAGE
    # Listing does not ask the runner (retrieving would record the session's usage instead).
    listed = {d.id: d for d in client.beta.dreams.list(created_at_gt=_just_before(made[0].created_at))}
    assert listed[canceled].usage.model_dump() == USAGE
    assert listed[canceled].model_copy(update={"usage": stopped.usage}) == stopped


@pytest.mark.parametrize("call", ["retrieve", "archive", "cancel"])
def test_an_unknown_dream_is_a_404(client: anthropic.Anthropic, call: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as refused:
        getattr(client.beta.dreams, call)("drm_nowhere")
    assert error_of(refused.value)["type"] == "not_found_error"


class RecordingRunner:
    """A runner that only records what it is told: its dreams stay ``pending``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Body]] = []

    async def start(self, dream: Body) -> None:
        self.calls.append(("start", dream))

    async def cancel(self, dream: Body) -> None:
        self.calls.append(("cancel", dream))

    async def refresh(self, dream: Body) -> Body:
        self.calls.append(("refresh", dream))
        return dream


@dataclass
class InProcess:
    client: anthropic.AsyncAnthropic
    runner: RecordingRunner
    answers: StrictAnswers
    inputs: list[Any]


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[InProcess]:
    """The dream routes in this process, on a store of their own, with a ``RecordingRunner``."""
    store = await open_store(f"sqlite://{tmp_path}/store.db")
    runner = RecordingRunner()
    app = Starlette(routes=dream_routes.routes, exception_handlers=HANDLERS)
    app.state.gateway = SimpleNamespace(
        store=store, settings=SimpleNamespace(max_body_bytes=1 << 20), dream_runner=runner
    )
    answers = StrictAnswers("dreams", _expected)

    async def check(response: httpx2.Response) -> None:
        await response.aread()
        answers(response)

    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), event_hooks={"response": [check]})
    try:
        memory_store = await memory_stores.create(store, MemoryStoreCreate(name="in process"))
        await store.insert("session", {"id": "sesn_inproc", "created_at": "2026-01-01T00:00:00Z"})
        async with anthropic.AsyncAnthropic(
            base_url="http://gateway", api_key="k", http_client=http
        ) as client:
            yield InProcess(client, runner, answers, _inputs(memory_store["id"], ["sesn_inproc"]))
    finally:
        await store.close()
    assert answers.checked and not answers.problems, answers.problems


async def test_the_gateways_dream_runner_is_told_of_created_and_canceled_dreams(
    in_process: InProcess,
) -> None:
    created = await in_process.client.beta.dreams.create(inputs=in_process.inputs, model=MODEL)
    canceled = await in_process.client.beta.dreams.cancel(created.id)
    assert [(name, dream["id"], dream["status"]) for name, dream in in_process.runner.calls] == [
        ("start", created.id, "pending"),
        ("cancel", canceled.id, "canceled"),
    ]
    assert in_process.answers.checked == 2


async def test_a_dream_its_runner_has_not_started_stays_pending_until_canceled(in_process: InProcess) -> None:
    client = in_process.client

    async def listed(*statuses: BetaDreamStatus) -> list[str]:
        return [d.id for d in (await client.beta.dreams.list(statuses=list(statuses))).data]

    created = await client.beta.dreams.create(inputs=in_process.inputs, model=MODEL)
    assert await client.beta.dreams.retrieve(created.id) == created  # the runner's refresh: no progress
    assert (await listed("pending"), await listed("running", "canceled")) == ([created.id], [])
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.beta.dreams.archive(created.id)
    assert "cancel" in error_of(refused.value)["message"]
    canceled = await client.beta.dreams.cancel(created.id)
    assert canceled.status == "canceled" and canceled.ended_at is not None
    assert canceled.model_copy(update={"status": "pending", "ended_at": None}) == created
    assert (await listed("pending"), await listed("canceled")) == ([], [created.id])
    archived = await client.beta.dreams.archive(created.id)
    assert archived.model_copy(update={"archived_at": None}) == canceled and archived.archived_at is not None
    assert [name for name, _ in in_process.runner.calls] == ["start", "refresh", "cancel"]
