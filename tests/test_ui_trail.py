"""The session trail page in headless Chromium: sign in with the key, open a session whose
model call is in flight, and watch an interrupt, a follow-up and the answer arrive live."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect, sync_playwright

from tests.conftest import Scripts
from tests.support.observability import observability_gateway, sdk, toolset_agent
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message

CHROMIUM = os.environ.get("TETHER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is not at {CHROMIUM}: install Debian's chromium package (CI does) "
            "or point TETHER_TEST_CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_server: ServerProcess, api_key: str
) -> Iterator[ServerProcess]:
    with observability_gateway(tmp_path_factory.mktemp("ui"), model_server.url, api_key) as server:
        yield server


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        context.close()


def _sign_in(page: Page, served: ServerProcess, key: str) -> None:
    page.goto(served.url + "/ui")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#api-key", key)
    page.click("#sign-in")


def _wait_for_event(stream: Any, kind: str, nth: int = 1) -> None:
    seen = 0
    for event in stream:
        if event.type == kind:
            seen += 1
            if seen == nth:
                return
    raise AssertionError(f"the stream ended before {kind} #{nth}")


def test_the_page_and_its_assets_are_public_and_locked_down(served: ServerProcess) -> None:
    page = httpx2.get(served.url + "/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx2.get(served.url + "/ui/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx2.get(served.url + "/ui/app.css").status_code == 200
    assert httpx2.get(served.url + "/v1/sessions").status_code == 401  # the data is not


def test_a_wrong_key_is_refused_at_sign_in(page: Page, served: ServerProcess) -> None:
    _sign_in(page, served, "not-the-key")
    expect(page.locator("#login-error")).to_have_text("That API key was not accepted.")
    expect(page.locator("#list-view")).to_be_hidden()


def test_a_running_session_updates_live_in_the_browser(
    page: Page, served: ServerProcess, api_key: str, scripts: Scripts
) -> None:
    console_errors: list[str] = []
    page.on("console", lambda message: _collect_error(message, console_errors))
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "text", "text": "Writing the notes."},
                    {
                        "type": "tool_use",
                        "name": "write",
                        "input": {"file_path": "notes.txt", "content": "alpha\nbeta\n"},
                    },
                ]
            },
            {
                "content": [
                    {
                        "type": "tool_use",
                        "name": "edit",
                        "input": {"file_path": "notes.txt", "old_string": "beta", "new_string": "gamma"},
                    }
                ]
            },
            # The third call hangs once (the model is "thinking" while the page loads), then answers.
            {"hang_first": 1, "content": [{"type": "text", "text": "Final answer: notes updated."}]},
        ]
    )
    with sdk(served, api_key) as client:
        environment = client.beta.environments.create(name="ui-env")
        agent = toolset_agent(client, marker, name="ui-agent")
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="UI trail")
        with client.beta.sessions.events.stream(session.id) as stream:
            client.beta.sessions.events.send(session.id, events=[user_message("update the notes")])  # type: ignore[list-item]
            _wait_for_event(stream, "span.model_request_start", nth=3)

        # Sign in, find the session in the list, open it.
        _sign_in(page, served, api_key)
        row = page.locator(f'#sessions tr[data-session-id="{session.id}"]')
        expect(row).to_contain_text("running")
        expect(row).to_contain_text("UI trail")
        row.get_by_role("link").click()

        # History: the write and the edit as diffs, linked results, and the model call in flight.
        timeline = page.locator("#timeline")
        expect(page.locator("#session-status")).to_contain_text("running")
        write = timeline.locator('li[data-type="agent.tool_use"]').nth(0)
        expect(write.locator(".diff .l.add")).to_have_text(["alpha\n", "beta\n"])
        expect(write.locator(".badge.perm-allow")).to_have_text("allow")
        expect(write.locator(".outcome")).to_have_text("✓ result")
        edit = timeline.locator('li[data-type="agent.tool_use"]').nth(1)
        expect(edit.locator(".diff .l.del")).to_have_text(["beta\n"])
        expect(edit.locator(".diff .l.add")).to_have_text(["gamma\n"])
        models = timeline.locator('li[data-type="span.model_request_start"]')
        expect(models).to_have_count(3)
        expect(models.nth(0).locator(".latency")).to_have_text(re.compile(r"\d+ ms|\d+\.\d s"))
        expect(models.nth(0)).to_contain_text(re.compile(r"\d+ in · \d+ out"))
        expect(models.nth(2)).to_contain_text("in flight")
        expect(page.locator("#connection")).to_have_text("live")

        # Live: an interrupt, then a follow-up message and the answer, each without a reload.
        client.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
        expect(timeline.locator('li[data-type="user.interrupt"]')).to_contain_text("correction")
        expect(models.nth(2).locator(".badge.tag-error")).to_have_text("failed")
        expect(page.locator("#session-status")).to_contain_text("idle")

        client.beta.sessions.events.send(session.id, events=[user_message("please finish")])  # type: ignore[list-item]
        answer = timeline.locator('li[data-type="agent.message"]', has_text="Final answer")
        expect(answer).to_be_visible()
        expect(timeline.locator('li[data-type="user.message"]').nth(1)).to_contain_text(
            "follow-up (correction)"
        )
        expect(timeline.locator('li[data-type="session.status_idle"]')).to_have_count(2)

        # The figures follow the log: two corrections (interrupt, follow-up), an intact chain.
        figures = page.locator("#session-figures")
        expect(figures.locator('[data-figure="Human corrections"] .value')).to_have_text("2")
        expect(figures.locator('[data-figure="Audit trail"] .value')).to_have_text("intact")
        expect(figures.locator('[data-figure="Tokens"] .detail')).to_contain_text("estimate")

        logged = client.beta.sessions.events.with_raw_response.list(
            session.id, limit=1000
        ).http_response.json()
    shown = page.locator("#timeline li").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
    ended = {e["id"] for e in logged["data"] if e["type"] == "span.model_request_end"}
    # Every event is on the page exactly once (model ends fold into their start's row), in log order.
    assert shown == [e["id"] for e in logged["data"] if e["id"] not in ended]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-session-trail.png"), full_page=True)
    page.click("text=← all sessions")
    expect(page.locator("#aggregate [data-figure='Audit trail'] .value")).to_contain_text("intact")
    page.screenshot(path=str(ARTIFACTS / "ui-session-list.png"), full_page=True)
    assert console_errors == []


def test_retries_permission_decisions_and_denials_are_shown(
    page: Page, served: ServerProcess, api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add(
        [
            {
                "fail_first": [{"status": 529, "type": "overloaded_error", "message": "busy"}],
                "content": [{"type": "tool_use", "name": "bash", "input": {"command": "rm -rf build"}}],
            },
            {"content": [{"type": "text", "text": "Understood, not deleting."}]},
        ]
    )
    with sdk(served, api_key) as client:
        environment = client.beta.environments.create(name="ui-env")
        agent = client.beta.agents.create(
            name="careful",
            model="claude-sonnet-4-6",
            system=marker,
            tools=[
                {
                    "type": "agent_toolset_20260401",
                    "default_config": {"permission_policy": {"type": "always_ask"}},
                }
            ],
        )
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        asked = send_and_stream(client, session.id, [user_message("clean up")])
        use = next(e for e in asked if e.type == "agent.tool_use")
        denial = {
            "type": "user.tool_confirmation",
            "tool_use_id": use.id,
            "result": "deny",
            "deny_message": "keep it",
        }
        send_and_stream(client, session.id, [denial])

    _sign_in(page, served, api_key)
    page.goto(f"{served.url}/ui#/sessions/{session.id}")
    timeline = page.locator("#timeline")
    retry = timeline.locator('li[data-type="session.error"]')
    expect(retry).to_contain_text("model_overloaded_error")
    expect(retry.locator(".tag-retry")).to_have_text("retrying (recovery)")
    tool = timeline.locator('li[data-type="agent.tool_use"]')
    expect(tool.locator(".badge.perm-ask")).to_have_text("ask")
    expect(tool.locator(".confirmation")).to_have_text("user denied")
    expect(tool.locator("pre.command")).to_have_text("$ rm -rf build")
    expect(tool.locator(".policy")).to_contain_text("always_ask")
    expect(tool.locator(".outcome")).to_have_text("✗ error result")
    expect(timeline.locator('li[data-type="session.status_idle"]').first).to_contain_text("waiting on bash")
    confirmation = timeline.locator('li[data-type="user.tool_confirmation"]')
    expect(confirmation).to_contain_text("keep it")
    expect(confirmation.locator(".tag-correction")).to_have_text("correction")
    figures = page.locator("#session-figures")
    expect(figures.locator('[data-figure="Recovery events"] .value')).to_have_text("1")
    expect(figures.locator('[data-figure="Human corrections"] .detail')).to_contain_text("1 denied")


def test_a_dropped_stream_reconnects_from_the_last_event_seen(
    page: Page, served: ServerProcess, api_key: str, scripts: Scripts
) -> None:
    marker = scripts.add(
        [
            {"content": [{"type": "text", "text": "first reply"}]},
            {"content": [{"type": "text", "text": "second reply"}]},
        ]
    )
    with sdk(served, api_key) as client:
        environment = client.beta.environments.create(name="ui-env")
        agent = client.beta.agents.create(name="reconnecting", model="claude-sonnet-4-6", system=marker)
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        history = send_and_stream(client, session.id, [user_message("one")])

        requested: list[str | None] = []

        def drop_the_first_stream(route: Route) -> None:
            requested.append(route.request.headers.get("last-event-id"))
            if len(requested) == 1:  # the connection "drops" at once, with nothing sent
                route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body="")
            else:
                route.continue_()

        page.route(re.compile(r"/events/stream(\?|$)"), drop_the_first_stream)
        _sign_in(page, served, api_key)
        page.goto(f"{served.url}/ui#/sessions/{session.id}")
        timeline = page.locator("#timeline")
        expect(timeline.locator("li")).to_have_count(len(history) - 1)  # the model end folds into its start
        expect(page.locator("#connection")).to_have_text("live")

        client.beta.sessions.events.send(session.id, events=[user_message("two")])  # type: ignore[list-item]
        expect(timeline.locator('li[data-type="agent.message"]', has_text="second reply")).to_be_visible()
    # Both connections resumed after the newest event the page had: nothing lost, nothing twice.
    assert requested[:2] == [history[-1].id, history[-1].id]
    ids = timeline.locator("li").evaluate_all("rows => rows.map(r => r.dataset.eventId)")
    assert len(ids) == len(set(ids))


def _collect_error(message: ConsoleMessage, errors: list[str]) -> None:
    if message.type == "error":
        errors.append(f"{message.text} at {message.location.get('url')}")
