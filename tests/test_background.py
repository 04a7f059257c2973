"""No zombie gateway: a failing background loop is restarted, and a lifespan that dies while
serving stops the server instead of leaving it answering with nothing behind it."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import pytest

from gateway.background import supervised
from gateway.backoff import Backoff
from gateway.serving import _LifespanWatch

pytestmark = pytest.mark.anyio


async def test_a_failing_loop_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError(f"failure {len(runs)}")

    with anyio.fail_after(5), caplog.at_level(logging.ERROR, "tether"):
        await supervised("flaky loop", flaky, Backoff(first=0.01, maximum=0.02))
    assert runs == [0, 1, 2]
    assert [r.getMessage().split(";")[0] for r in caplog.records] == ["flaky loop failed"] * 2


async def test_cancellation_still_stops_a_supervised_loop() -> None:
    async def forever() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(0.05) as scope:
        await supervised("forever", forever)
    assert scope.cancelled_caught


class _Server:
    started = True
    should_exit = False


async def _lifespan_of(app: Any, messages: list[dict[str, str]]) -> _LifespanWatch:
    watch = _LifespanWatch(app)
    server = _Server()
    watch.server = server  # type: ignore[assignment]
    incoming = iter(messages)

    async def receive() -> dict[str, str]:
        try:
            return next(incoming)
        except StopIteration:
            await anyio.sleep_forever()
            raise

    async def send(message: dict[str, str]) -> None:
        pass

    orderly = messages[-1]["type"] == "lifespan.shutdown"
    with contextlib.nullcontext() if orderly else pytest.raises(RuntimeError):
        await watch({"type": "lifespan"}, receive, send)
    return watch


async def test_a_lifespan_that_dies_while_serving_stops_the_server() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # startup
        await send({"type": "lifespan.startup.complete"})
        raise RuntimeError("the store closed under the app")

    watch = await _lifespan_of(app, [{"type": "lifespan.startup"}])
    assert watch.died and watch.server is not None and watch.server.should_exit


async def test_an_orderly_shutdown_is_not_a_death() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})

    watch = await _lifespan_of(app, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    assert not watch.died and watch.server is not None and not watch.server.should_exit
