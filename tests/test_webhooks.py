"""Webhooks: Standard Webhooks signatures, deliveries retried against a loopback receiver
that fails and then recovers, the REST API plus real session status deliveries, and the
refusal of internal targets (at registration, and at delivery when DNS changes)."""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from gateway.errors import InvalidRequest
from gateway.observability.metrics import Metrics
from gateway.sessionlog import events as ev
from gateway.store import open_store
from gateway.store.base import Body, Store
from gateway.webhooks import endpoints
from gateway.webhooks.dispatcher import DeliveryResult, WebhookDispatcher
from gateway.webhooks.endpoints import WebhookCreate
from gateway.webhooks.signing import WebhookVerificationError, generate_secret, sign, signed_headers, verify
from gateway.webhooks.targets import IPAddress, TargetRefused, TargetUnresolved, WebhookTargets
from tests.conftest import Scripts
from tests.support.observability import Received, observability_gateway, receiving, sdk
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message

# Signatures ----------------------------------------------------------------------------------


def test_signatures_match_the_standard_webhooks_reference_vector() -> None:
    # From the Standard Webhooks reference libraries' test suite.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


def test_verify_accepts_a_genuine_delivery_and_refuses_anything_else() -> None:
    secret = generate_secret()
    body = json.dumps({"type": "session.status_idle", "data": {"session_id": "sesn_1"}}).encode()
    headers = signed_headers(secret, "sevt_1", body, timestamp=1_000_000)

    assert verify(secret, headers, body, now=1_000_010)["data"]["session_id"] == "sesn_1"
    # Header names in any case, several signatures (rotation): still fine.
    rotated = {k.title(): v for k, v in headers.items()}
    rotated["Webhook-Signature"] = "v1,bm90IGl0 " + headers["webhook-signature"]
    assert verify(secret, rotated, body.decode(), now=1_000_010)

    refusals = [
        (secret, headers, body.replace(b"idle", b"running"), 1_000_010),  # body altered
        (generate_secret(), headers, body, 1_000_010),  # another endpoint's secret
        (secret, {**headers, "webhook-id": "sevt_2"}, body, 1_000_010),  # id swapped
        (secret, headers, body, 1_000_000 + 301),  # replayed later
        (secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body, 1_000_010),
        (secret, {**headers, "webhook-timestamp": "soon"}, body, 1_000_010),
    ]
    for key, sent, payload, now in refusals:
        with pytest.raises(WebhookVerificationError):
            verify(key, sent, payload, now=now)


# The dispatcher against loopback receivers ---------------------------------------------------

LOOPBACK = WebhookTargets.from_entries(["127.0.0.1"])
"""The receivers listen on 127.0.0.1: an operator allow-list is what lets them be targets."""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await open_store(f"sqlite:///{tmp_path / 'tether.db'}")
    try:
        yield opened
    finally:
        await opened.close()


async def _register(store: Store, url: str, types: list[str] | None = None) -> dict[str, Any]:
    return await endpoints.create(store, WebhookCreate(url=url + "/hook", event_types=types), LOOPBACK)


class Finished:
    """An ``on_result`` callback whose event is set after ``count`` finished deliveries."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.all = anyio.Event()

    def __call__(self, result: DeliveryResult) -> None:
        self.count -= 1
        if self.count == 0:
            self.all.set()


async def _deliver(dispatcher: WebhookDispatcher, finished: Finished, *published: tuple[str, Body]) -> None:
    """Run the delivery worker, publish ``published`` (session id, event), and return once the
    deliveries ``finished`` counts have all ended."""
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(dispatcher.run)
        for session_id, event in published:
            dispatcher.publish(session_id, event)
        with anyio.fail_after(15):
            await finished.all.wait()
        tasks.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_failing_receiver_gets_the_delivery_again_until_it_recovers(store: Store) -> None:
    metrics = Metrics(process_metrics=False)
    with receiving(responses=[500, 503]) as receiver:
        endpoint = await _register(store, receiver.url)
        finished = Finished(1)
        dispatcher = WebhookDispatcher(
            store,
            base_delay=0.01,
            max_delay=0.05,
            max_attempts=5,
            metrics=metrics,
            on_result=finished,
            targets=LOOPBACK,
        )
        status = ev.status_idle("end_turn")
        await _deliver(dispatcher, finished, ("sesn_w", status))
        attempts = receiver.requests

    assert [a.status for a in attempts] == [500, 503, 200]
    assert {a.headers["webhook-id"] for a in attempts} == {status["id"]}
    for attempt in attempts:
        payload = verify(endpoint["secret"], attempt.headers, attempt.body)
        assert payload == {
            "type": "session.status_idle",
            "timestamp": status["processed_at"],
            "data": {"session_id": "sesn_w", "event": status},
        }
        assert attempt.path == "/hook" and attempt.headers["content-type"] == "application/json"
    (result,) = dispatcher.results
    assert result.delivered and result.attempts == 3 and result.last_status == 200
    assert metrics.webhook_deliveries.labels("retry")._value.get() == 2
    assert metrics.webhook_deliveries.labels("delivered")._value.get() == 1


@pytest.mark.anyio
async def test_attempts_are_bounded_and_gone_stops_at_once(store: Store) -> None:
    with receiving(responses=[500] * 10) as broken, receiving(responses=[410]) as gone:
        await _register(store, broken.url)
        await _register(store, gone.url)
        finished = Finished(2)
        dispatcher = WebhookDispatcher(
            store,
            base_delay=0.01,
            max_delay=0.02,
            max_attempts=3,
            metrics=Metrics(process_metrics=False),
            on_result=finished,
            targets=LOOPBACK,
        )
        await _deliver(dispatcher, finished, ("sesn_f", ev.new_event("session.status_running")))
        assert len(broken.requests) == 3 and len(gone.requests) == 1
    by_status = {r.last_status: r for r in dispatcher.results}
    assert by_status[500].attempts == 3 and not by_status[500].delivered
    assert by_status[410].attempts == 1 and not by_status[410].delivered


@pytest.mark.anyio
async def test_publishing_never_blocks_and_only_subscribed_types_are_sent(store: Store) -> None:
    metrics = Metrics(process_metrics=False)
    with receiving() as receiver:
        await _register(store, receiver.url, ["session.status_idle"])
        finished = Finished(1)
        dispatcher = WebhookDispatcher(
            store, queue_size=2, metrics=metrics, on_result=finished, targets=LOOPBACK
        )
        # No worker yet: two events fill the queue, the rest are dropped, and nothing blocks.
        dispatcher.publish("sesn_q", ev.new_event("session.status_running"))
        dispatcher.publish("sesn_q", ev.status_idle("end_turn"))
        for _ in range(3):
            dispatcher.publish("sesn_q", ev.new_event("session.status_running"))
        dispatcher.publish("sesn_q", ev.new_event("agent.message"))  # not a status change: ignored
        assert metrics.webhook_deliveries.labels("dropped")._value.get() == 3

        await _deliver(dispatcher, finished)
    # The running event went first (one worker, in order) to no endpoint; only idle was sent.
    (delivery,) = receiver.requests
    assert json.loads(delivery.body)["type"] == "session.status_idle"


# The REST API and a real session -------------------------------------------------------------


@pytest.fixture(scope="module")
def hooked(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    # The receivers below listen on loopback, which only an operator's allow-list permits.
    env = {"TETHER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1"}
    with observability_gateway(tmp_path_factory.mktemp("webhooks"), model_server.url, api_key, env) as server:
        yield server


def _api(server: ServerProcess, api_key: str, method: str, path: str, body: Any = None) -> httpx2.Response:
    return httpx2.request(method, server.url + path, json=body, headers={"x-api-key": api_key})


def test_endpoints_are_registered_listed_and_deleted_and_the_secret_is_shown_once(
    hooked: ServerProcess, api_key: str
) -> None:
    created = _api(hooked, api_key, "POST", "/v1/tether/webhooks", {"url": "https://example.test/hook"})
    assert created.status_code == 200
    body = created.json()
    assert body["id"].startswith("whep_") and body["secret"].startswith("whsec_")
    assert body["event_types"] == [
        "session.status_running",
        "session.status_idle",
        "session.status_rescheduled",
        "session.status_terminated",
        "span.outcome_evaluation_end",
    ]

    listed = _api(hooked, api_key, "GET", "/v1/tether/webhooks").json()
    assert body["id"] in [e["id"] for e in listed["data"]]
    assert all("secret" not in e for e in listed["data"])
    fetched = _api(hooked, api_key, "GET", f"/v1/tether/webhooks/{body['id']}").json()
    assert "secret" not in fetched and fetched["url"] == "https://example.test/hook"

    deleted = _api(hooked, api_key, "DELETE", f"/v1/tether/webhooks/{body['id']}")
    assert deleted.json() == {"id": body["id"], "type": "webhook_endpoint_deleted"}
    assert _api(hooked, api_key, "GET", f"/v1/tether/webhooks/{body['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"url": "ftp://example.test/x"}, "url"),
        ({"url": "https://example.test", "event_types": ["agent.message"]}, "event_types"),
        ({"url": "https://example.test", "secret": "mine"}, "secret"),
        ({}, "url"),
    ],
)
def test_invalid_registrations_are_refused(
    hooked: ServerProcess, api_key: str, body: dict[str, Any], problem: str
) -> None:
    response = _api(hooked, api_key, "POST", "/v1/tether/webhooks", body)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(problem)


def test_webhooks_need_the_api_key(hooked: ServerProcess) -> None:
    assert httpx2.get(hooked.url + "/v1/tether/webhooks").status_code == 401


def test_a_session_turn_delivers_signed_status_changes_even_through_a_failure(
    hooked: ServerProcess, api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "hi"}]}])
    with receiving(responses=[500]) as receiver:
        registered = _api(hooked, api_key, "POST", "/v1/tether/webhooks", {"url": receiver.url + "/tether"})
        secret = registered.json()["secret"]
        try:
            with sdk(hooked, api_key) as client:
                environment = client.beta.environments.create(name="hook-env")
                agent = client.beta.agents.create(name="hooked", model="claude-sonnet-4-6", system=marker)
                session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
                streamed = send_and_stream(client, session.id, [user_message("hello")])
            statuses = {e.id: e.type for e in streamed if e.type.startswith("session.status_")}

            def all_delivered(got: list[Received]) -> list[Received] | None:
                ok = [r for r in got if r.status == 200]
                return ok if {r.headers["webhook-id"] for r in ok} >= set(statuses) else None

            delivered = receiver.wait(all_delivered, timeout=20)
        finally:
            _api(hooked, api_key, "DELETE", f"/v1/tether/webhooks/{registered.json()['id']}")

    assert receiver.requests[0].status == 500  # the first attempt failed and was retried
    for delivery in delivered:
        payload = verify(secret, delivery.headers, delivery.body)
        assert payload["data"]["session_id"] == session.id
        assert payload["type"] == statuses[delivery.headers["webhook-id"]]


# Internal targets (SSRF) ---------------------------------------------------------------------

INTERNAL_URLS = [
    "http://127.0.0.1:8080/hook",
    "http://localhost/hook",
    "http://[::1]/hook",
    "http://2130706433/hook",  # 127.0.0.1 spelled as a number, as clients read it
    "http://[::ffff:127.0.0.1]/hook",
    "http://10.1.2.3/hook",
    "http://172.16.5.4/hook",
    "http://192.168.0.10/hook",
    "http://[fd12:3456::1]/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://0.0.0.0:9/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_internal_targets_are_refused_at_registration_without_an_allow_list(
    gateway: ServerProcess, api_key: str, url: str
) -> None:
    response = _api(gateway, api_key, "POST", "/v1/tether/webhooks", {"url": url})

    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith("url: ")
    assert "TETHER_WEBHOOK_ALLOWED_HOSTS" in error["error"]["message"]


def test_the_allow_list_lets_listed_targets_through_and_no_others(
    hooked: ServerProcess, api_key: str
) -> None:
    listed = _api(hooked, api_key, "POST", "/v1/tether/webhooks", {"url": "http://127.0.0.1:9/hook"})
    assert listed.status_code == 200
    _api(hooked, api_key, "DELETE", f"/v1/tether/webhooks/{listed.json()['id']}")
    for url in ("http://127.0.0.2/hook", "http://[::1]/hook", "http://169.254.169.254/"):
        response = _api(hooked, api_key, "POST", "/v1/tether/webhooks", {"url": url})
        assert response.status_code == 400, url


class FakeDNS:
    """An injected resolver whose answers a test changes between calls; records each lookup."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in self.answers[host]]


PUBLIC = "93.184.216.34"


@pytest.mark.anyio
async def test_a_name_is_refused_if_any_address_it_resolves_to_is_internal() -> None:
    dns = FakeDNS(
        {"public.test": [PUBLIC], "mixed.test": [PUBLIC, "10.0.0.7"], "meta.test": ["169.254.169.254"]}
    )
    strict = WebhookTargets(resolver=dns)

    assert await strict.addresses("public.test", 443) == [ipaddress.ip_address(PUBLIC)]
    for name in ("mixed.test", "meta.test"):
        with pytest.raises(TargetRefused, match="internal address"):
            await strict.addresses(name, 443)
    with pytest.raises(TargetUnresolved):
        await strict.addresses("nowhere.test", 443)
    with pytest.raises(InvalidRequest, match=r"^url: meta\.test resolves to an internal address"):
        await strict.check_url("https://meta.test/hook")
    await strict.check_url("https://nowhere.test/hook")  # unresolvable now: checked at delivery


@pytest.mark.anyio
async def test_allow_list_entries_admit_names_addresses_and_networks() -> None:
    dns = FakeDNS(
        {
            "hooks.corp.test": ["10.9.9.9"],
            "corp.test": ["10.9.9.8"],
            "other.test": ["10.1.2.3"],
            "v6.test": ["fd00::5"],
        }
    )
    targets = WebhookTargets.from_entries(["*.corp.test", "10.1.0.0/16", " fd00::/8 "], resolver=dns)

    assert await targets.addresses("hooks.corp.test", 80)  # listed by name: any address
    assert await targets.addresses("other.test", 80)  # its address is in a listed network
    assert await targets.addresses("v6.test", 80)
    assert await targets.addresses("10.1.200.1", 80)
    with pytest.raises(TargetRefused):
        await targets.addresses("10.2.0.1", 80)
    with pytest.raises(TargetRefused):
        await targets.addresses("corp.test", 80)  # a wildcard does not cover its apex
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "https://hooks.corp.test", "hooks.corp.test:443"):
        with pytest.raises(ValueError, match="TETHER_WEBHOOK_ALLOWED_HOSTS"):
            WebhookTargets.from_entries([bad])


@pytest.mark.anyio
async def test_a_name_that_turns_internal_after_registration_is_not_delivered_to(store: Store) -> None:
    metrics = Metrics(process_metrics=False)
    with receiving() as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        dns = FakeDNS({"hooks.rebind.test": [PUBLIC]})
        targets = WebhookTargets(resolver=dns)
        await endpoints.create(
            store, WebhookCreate(url=f"http://hooks.rebind.test:{port}/hook"), targets
        )  # public when registered
        dns.answers["hooks.rebind.test"] = ["127.0.0.1"]  # ... and loopback by the time of delivery
        finished = Finished(1)
        dispatcher = WebhookDispatcher(
            store, base_delay=0.01, max_attempts=4, metrics=metrics, on_result=finished, targets=targets
        )
        await _deliver(dispatcher, finished, ("sesn_r", ev.status_idle("end_turn")))

    assert receiver.requests == []
    (result,) = dispatcher.results
    assert not result.delivered and result.last_status is None
    assert result.attempts == 1, "a refused target is not retried"
    assert result.last_error is not None and "internal address (127.0.0.1)" in result.last_error
    assert metrics.webhook_deliveries.labels("failed")._value.get() == 1


@pytest.mark.anyio
async def test_a_delivery_connects_to_the_address_that_was_checked(store: Store) -> None:
    # hooks.pinned.test exists only in the injected resolver: had the connection looked the
    # name up again (the rebinding window), it would have failed instead of arriving.
    with receiving() as receiver:
        port = receiver.url.rsplit(":", 1)[1]
        dns = FakeDNS({"hooks.pinned.test": ["127.0.0.1"]})
        targets = WebhookTargets.from_entries(["127.0.0.1"], resolver=dns)
        await endpoints.create(store, WebhookCreate(url=f"http://hooks.pinned.test:{port}/hook"), targets)
        dns.lookups.clear()
        finished = Finished(1)
        dispatcher = WebhookDispatcher(
            store, metrics=Metrics(process_metrics=False), on_result=finished, targets=targets
        )
        await _deliver(dispatcher, finished, ("sesn_p", ev.status_idle("end_turn")))

    (delivery,) = receiver.requests
    assert delivery.headers["host"] == f"hooks.pinned.test:{port}", "the URL's name is kept in Host"
    assert dns.lookups == ["hooks.pinned.test"], "one lookup, checked, then connected to"
    assert dispatcher.results[0].delivered


@pytest.mark.anyio
async def test_an_outcome_verdict_is_delivered_to_its_subscribers(store: Store) -> None:
    """``span.outcome_evaluation_end`` can be subscribed to: a deployment's caller learns
    whether the work passed without following the session."""
    with receiving() as receiver:
        await _register(store, receiver.url, ["span.outcome_evaluation_end"])
        finished = Finished(1)
        dispatcher = WebhookDispatcher(store, on_result=finished, targets=LOOPBACK)
        verdict = ev.new_event(
            "span.outcome_evaluation_end",
            outcome_id="outc_1",
            iteration=0,
            result="satisfied",
            explanation="ok",
        )
        start = ev.new_event("span.outcome_evaluation_start", outcome_id="outc_1")
        await _deliver(dispatcher, finished, ("sesn_v", start), ("sesn_v", verdict))
    (delivery,) = receiver.requests
    sent = json.loads(delivery.body)
    assert sent["type"] == "span.outcome_evaluation_end" and sent["data"]["event"]["result"] == "satisfied"
