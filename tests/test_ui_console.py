"""The operator console in headless Chromium: every action taken on the page (approve, deny
with a reason, interrupt, send a message, archive) is checked through the SDK, and the list's
attention flag, filters, search and pagination are checked against what the API holds."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from playwright.sync_api import Browser, Page, Request, expect, sync_playwright

from tests.conftest import Scripts
from tests.support.mcp_gateway_stack import start_upstream, text_of
from tests.support.observability import observability_gateway, sdk, wait_until
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message
from tests.support.tunnel_agents import start_agent, write_config

CHROMIUM = os.environ.get("TETHER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync"]
WAIT_MS = 15_000
SECONDS = re.compile(r"^\d+ ms$|^\d+\.\d s$")
ASK = {"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "always_ask"}}}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is not at {CHROMIUM}: set TETHER_TEST_CHROMIUM", pytrace=False)
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
    with observability_gateway(tmp_path_factory.mktemp("console"), model_server.url, api_key) as server:
        yield server


@pytest.fixture
def client(served: ServerProcess, api_key: str) -> Iterator[anthropic.Anthropic]:
    with sdk(served, api_key) as opened:
        yield opened


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    opened.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        yield opened
    finally:
        context.close()
    # A refused action is shown on the page, never thrown: the console stays clean.
    assert [e for e in errors if "status of 4" not in e] == []


def _open(page: Page, served: ServerProcess, key: str, fragment: str = "#/") -> None:
    page.goto(served.url + "/ui")
    page.fill("#api-key", key)
    page.click("#sign-in")
    expect(page.locator("#list-view")).to_be_visible()
    page.goto(f"{served.url}/ui{fragment}")


def _events(client: anthropic.Anthropic, session_id: str) -> list[Any]:
    return list(client.beta.sessions.events.list(session_id, limit=1000).data)


def _asking_session(client: anthropic.Anthropic, scripts: Scripts, after: str) -> tuple[Any, Any]:
    """A session idle on a ``write`` call that waits for a confirmation, and that call."""
    marker = scripts.add(
        [
            {
                "content": [
                    {"type": "tool_use", "name": "write", "input": {"file_path": "a.txt", "content": "x"}}
                ]
            },
            {"content": [{"type": "text", "text": after}]},
        ]
    )
    environment = client.beta.environments.create(name="console-env")
    agent = client.beta.agents.create(name="asker", model="claude-sonnet-4-6", system=marker, tools=[ASK])  # type: ignore[list-item]
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id, title="asking")
    seen = send_and_stream(client, session.id, [user_message("write it")])
    use = next(e for e in seen if e.type == "agent.tool_use")
    assert seen[-1].stop_reason.type == "requires_action"
    return session, use


def test_every_asset_is_public_and_served_under_the_csp(served: ServerProcess) -> None:
    for name in ("app.js", "actions.js", "trail.js", "lists.js", "pages.js", "figures.js", "app.css"):
        answer = httpx2.get(f"{served.url}/ui/{name}")
        assert answer.status_code == 200 and answer.content, name
        assert "script-src 'self'" in answer.headers["content-security-policy"]


def test_approving_a_pending_call_on_the_page_runs_it(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic, scripts: Scripts
) -> None:
    session, use = _asking_session(client, scripts, after="Written after approval.")
    _open(page, served, api_key, f"#/sessions/{session.id}")
    row = page.locator(f"#ev-{use.id}")
    expect(row.locator(".timer")).to_have_text(SECONDS)  # the running timer of the pending call
    row.locator("button.approve").click()

    def answered() -> list[Any] | None:
        events = _events(client, session.id)
        return events if events[-1].type == "session.status_idle" and len(events) > 6 else None

    events = wait_until(answered, what="the approved call to run")
    confirmation = next(e for e in events if e.type == "user.tool_confirmation")
    assert (confirmation.tool_use_id, confirmation.result) == (use.id, "allow")
    result = next(e for e in events if e.type == "agent.tool_result")
    assert result.tool_use_id == use.id and not result.is_error
    assert any(e.type == "agent.message" and "Written after approval." in e.content[0].text for e in events)
    # The page follows: the controls are gone, the call shows its duration and its result.
    expect(row.locator("button.approve")).to_have_count(0)
    expect(row.locator(".confirmation")).to_have_text("user allowed")
    expect(row.locator(".outcome")).to_have_text("✓ result")
    expect(row.locator(".duration")).to_have_text(SECONDS)


def test_denying_with_a_reason_on_the_page_sends_the_denial(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic, scripts: Scripts
) -> None:
    session, use = _asking_session(client, scripts, after="Fine, not writing.")
    _open(page, served, api_key, f"#/sessions/{session.id}")
    row = page.locator(f"#ev-{use.id}")
    row.locator("input.deny-reason").fill("not in this folder")
    row.locator("button.deny").click()

    def denied() -> list[Any] | None:
        events = _events(client, session.id)
        return events if any(e.type == "agent.message" for e in events) else None

    events = wait_until(denied, what="the denial to be answered")
    confirmation = next(e for e in events if e.type == "user.tool_confirmation")
    assert (confirmation.result, confirmation.deny_message) == ("deny", "not in this folder")
    result = next(e for e in events if e.type == "agent.tool_result")
    assert result.tool_use_id == use.id and result.is_error
    assert "not in this folder" in result.content[0].text
    expect(row.locator(".confirmation")).to_have_text("user denied")
    expect(row.locator("button.deny")).to_have_count(0)

    # Reloaded, the history shows the call as answered: no controls come back.
    page.reload()
    expect(page.locator(f"#ev-{use.id} button.deny")).to_have_count(0)


def test_interrupting_a_running_session_from_the_page_idles_it(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic, scripts: Scripts
) -> None:
    marker = scripts.add([{"hang_first": 1, "content": [{"type": "text", "text": "late"}]}])
    environment = client.beta.environments.create(name="console-env")
    agent = client.beta.agents.create(name="slow", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    send_and_stream(client, session.id, [user_message("think")], until="span.model_request_start")
    _open(page, served, api_key, f"#/sessions/{session.id}")
    expect(page.locator("#session-status")).to_contain_text("running")
    page.click("#interrupt")

    def idled() -> list[Any] | None:
        events = _events(client, session.id)
        types = [e.type for e in events]
        if "user.interrupt" in types and types[-1] == "session.status_idle":
            return events
        return None

    wait_until(idled, what="the interrupt to idle the session")
    assert client.beta.sessions.retrieve(session.id).status == "idle"
    expect(page.locator("#session-status")).to_contain_text("idle")
    expect(page.locator('#timeline li[data-type="user.interrupt"]')).to_have_count(1)


def test_sending_a_message_from_the_page_is_logged_and_answered(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic, scripts: Scripts
) -> None:
    marker = scripts.add([{"content": [{"type": "text", "text": "Hello, operator."}]}])
    environment = client.beta.environments.create(name="console-env")
    agent = client.beta.agents.create(name="chatty", model="claude-sonnet-4-6", system=marker)
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    _open(page, served, api_key, f"#/sessions/{session.id}")
    page.fill("#message-text", "are you there?")
    page.click("#send-message")

    def answered() -> list[Any] | None:
        events = _events(client, session.id)
        return events if any(e.type == "agent.message" for e in events) else None

    events = wait_until(answered, what="the message to be answered")
    sent = next(e for e in events if e.type == "user.message")
    assert sent.content[0].text == "are you there?"
    expect(page.locator('#timeline li[data-type="agent.message"]')).to_contain_text("Hello, operator.")
    expect(page.locator("#message-text")).to_have_value("")


def test_archiving_from_the_page_sets_archived_at(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic
) -> None:
    environment = client.beta.environments.create(name="console-env")
    agent = client.beta.agents.create(name="archivable", model="claude-sonnet-4-6")
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)
    _open(page, served, api_key, f"#/sessions/{session.id}")
    expect(page.locator("#session-header h1")).to_have_text(session.id)
    page.click("#archive")
    wait_until(lambda: client.beta.sessions.retrieve(session.id).archived_at, what="archived_at")
    expect(page.locator("#archived")).to_have_text("archived")
    expect(page.locator("#send-message")).to_be_disabled()


def test_the_list_flags_and_filters_sessions_needing_attention(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic, scripts: Scripts
) -> None:
    waiting, _ = _asking_session(client, scripts, after="unused")
    env = client.beta.environments.create(name="calm-" + secrets.token_hex(3))
    agent = client.beta.agents.create(name="calm", model="claude-sonnet-4-6")
    calm = client.beta.sessions.create(agent=agent.id, environment_id=env.id, title="calm")
    _open(page, served, api_key)
    flagged = page.locator(f'#sessions tr[data-session-id="{waiting.id}"]')
    expect(flagged.locator(".badge.attention")).to_have_text("action required")
    expect(flagged).to_have_class("needs-attention")
    expect(page.locator(f'#sessions tr[data-session-id="{calm.id}"] .badge.attention')).to_have_count(0)

    page.check("#f-attention")
    expect(page.locator(f'#sessions tr[data-session-id="{calm.id}"]')).to_have_count(0)
    expect(flagged).to_be_visible()
    shown = page.locator("#sessions tbody tr").evaluate_all("rows => rows.map(r => r.dataset.sessionId)")
    flagged_ids = [
        s.id for s in client.beta.sessions.list(limit=100, extra_query={"needs_attention": "true"})
    ]
    assert shown == flagged_ids[: len(shown)] and waiting.id in shown


def test_search_environment_filter_and_where_each_session_ran(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic
) -> None:
    token = secrets.token_hex(4)
    local_env = client.beta.environments.create(name=f"local-{token}")
    onprem = client.beta.environments.create(name=f"onprem-{token}", config={"type": "self_hosted"})  # type: ignore[arg-type]
    agent = client.beta.agents.create(name="placed", model="claude-sonnet-4-6")
    local = client.beta.sessions.create(agent=agent.id, environment_id=local_env.id, title=f"here {token}")
    remote = client.beta.sessions.create(agent=agent.id, environment_id=onprem.id, title=f"there {token}")
    # A self-hosted worker claims the session's work item and records who it is, as tunnel_agent does.
    work = client.beta.environments.work
    item = work.poll(onprem.id, anthropic_worker_id="worker-7")
    assert item is not None and item.data.id == remote.id
    work.ack(item.id, environment_id=onprem.id)
    work.update(item.id, environment_id=onprem.id, metadata={"worker_id": "worker-7"})

    _open(page, served, api_key)
    page.fill("#q", token)
    rows = page.locator("#sessions tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-session-id", remote.id)
    expect(rows.nth(0).locator(".environment")).to_have_text(f"onprem-{token}")
    expect(rows.nth(0).locator(".ran-on")).to_have_text("worker worker-7")
    expect(rows.nth(1).locator(".environment")).to_have_text(f"local-{token}")
    expect(rows.nth(1).locator(".ran-on")).to_have_text("local sandbox")

    page.fill("#q", f"there {token}")
    expect(rows).to_have_count(1)
    page.fill("#q", "")
    page.select_option("#f-environment", local_env.id)
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_have_attribute("data-session-id", local.id)
    page.select_option("#f-status", "running")
    expect(page.locator("#sessions-empty")).to_be_visible()


def test_cursor_pagination_next_and_previous(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic
) -> None:
    env = client.beta.environments.create(name="paged-" + secrets.token_hex(3))
    agent = client.beta.agents.create(name="paged", model="claude-sonnet-4-6")
    created = [
        client.beta.sessions.create(agent=agent.id, environment_id=env.id, title=f"page item {n}").id
        for n in range(12)
    ]
    newest_first = created[::-1]
    _open(page, served, api_key)
    page.select_option("#f-environment", env.id)
    page.select_option("#f-limit", "10")
    rows = page.locator("#sessions tbody tr")

    def shown() -> list[str]:
        return rows.evaluate_all("rows => rows.map(r => r.dataset.sessionId)")

    expect(rows.first).to_have_attribute("data-session-id", newest_first[0])
    expect(rows).to_have_count(10)
    assert shown() == newest_first[:10]
    expect(page.locator("#prev-page")).to_be_disabled()
    page.click("#next-page")
    expect(rows).to_have_count(2)
    assert shown() == newest_first[10:]
    expect(page.locator("#page-info")).to_have_text("page 2")
    expect(page.locator("#next-page")).to_be_disabled()
    page.click("#prev-page")
    expect(rows).to_have_count(10)
    assert shown() == newest_first[:10]
    # A time range is a filter too: nothing of these was created in 2099, and changing a filter
    # starts again at the first page.
    page.fill("#f-from", "2099-01-01T00:00")
    expect(page.locator("#sessions-empty")).to_be_visible()
    expect(page.locator("#page-info")).to_have_text("page 1")
    page.fill("#f-from", "")
    page.fill("#f-to", "2099-01-01T00:00")
    expect(rows).to_have_count(10)


def test_agent_environment_and_tunnel_pages(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic, tmp_path: Path
) -> None:
    token = secrets.token_hex(4)
    agent = client.beta.agents.create(name=f"listed-{token}", model="claude-sonnet-4-6")
    onprem = client.beta.environments.create(name=f"onprem-{token}", config={"type": "self_hosted"})  # type: ignore[arg-type]
    client.beta.sessions.create(agent=agent.id, environment_id=onprem.id)
    work = client.beta.environments.work
    item = work.poll(onprem.id, anthropic_worker_id="worker-9")
    assert item is not None
    work.ack(item.id, environment_id=onprem.id)
    work.update(item.id, environment_id=onprem.id, metadata={"worker_id": "worker-9"})
    tunnel = httpx2.post(
        served.url + "/v1/tunnels", headers={"x-api-key": api_key}, json={"display_name": f"tun-{token}"}
    ).json()

    _open(page, served, api_key, "#/agents")
    expect(page.locator(f'#agents tr[data-id="{agent.id}"]')).to_contain_text(f"listed-{token}")
    expect(page.locator(f'#agents tr[data-id="{agent.id}"]')).to_contain_text("claude-sonnet-4-6")
    page.click("#nav >> text=Environments")
    row = page.locator(f'#environments tr[data-id="{onprem.id}"]')
    expect(row).to_contain_text("self_hosted")
    expect(row.locator(".workers")).to_contain_text("1 running")
    expect(row.locator(".workers")).to_contain_text("workers: worker-9")
    page.click("#nav >> text=Tunnels")
    row = page.locator(f'#tunnels tr[data-id="{tunnel["id"]}"]')
    expect(row).to_contain_text(f"tun-{token}")
    expect(row).to_contain_text(tunnel["domain"])
    expect(row.locator(".agents")).to_have_text("no agent connected")

    # A real tunnel agent dials in; the page lists it with its connection.
    secret = client.beta.tunnels.reveal_token(tunnel["id"]).tunnel_token
    config = write_config(tmp_path / "tunnel.yaml", [{"subdomain": "crm", "target": served.url}])
    agent_process = start_agent(served.url, secret, config, "onprem-a", connections=1)
    try:
        live = f"{served.url}/v1/tether/tunnels/{tunnel['id']}/connections"
        wait_until(lambda: httpx2.get(live, headers={"x-api-key": api_key}).json()["data"], what="the agent")
        page.reload()
        expect(row.locator(".agents")).to_contain_text("onprem-a (slot 0")
    finally:
        agent_process.stop()
    # The connections read behind the tunnel page needs the key like any data call.
    assert httpx2.get(f"{served.url}/v1/tether/tunnels/{tunnel['id']}/connections").status_code == 401


def test_the_vault_page_shows_metadata_and_never_a_secret(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic
) -> None:
    secret = "sekrit-" + secrets.token_hex(12)
    vault = client.beta.vaults.create(display_name="ops vault")
    credential = client.beta.vaults.credentials.create(
        vault.id,
        display_name="github bearer",
        auth={"type": "static_bearer", "mcp_server_url": "https://mcp.example.test/mcp", "token": secret},
    )
    bodies: list[bytes] = []

    def record(request: Request) -> None:
        response = request.response()
        if response is not None:
            bodies.append(response.body())

    page.on("requestfinished", record)
    _open(page, served, api_key, "#/vaults")
    row = page.locator(f'section.vault[data-id="{vault.id}"] tr[data-id="{credential.id}"]')
    expect(row).to_contain_text("github bearer")
    expect(row).to_contain_text("static_bearer")
    expect(row).to_contain_text("https://mcp.example.test/mcp")
    expect(page.locator(f'section.vault[data-id="{vault.id}"] h2')).to_contain_text("ops vault")
    assert any(credential.id.encode() in body for body in bodies)  # the listing did reach the page
    assert not any(secret.encode() in body for body in bodies)
    assert secret not in page.content()


def test_the_mcp_page_counts_calls_and_errors_per_tool(
    page: Page, served: ServerProcess, api_key: str
) -> None:
    name = "console-" + secrets.token_hex(3)
    upstream = start_upstream("alpha")
    try:
        rest = {"x-api-key": api_key}
        registered = {"name": name, "transport": {"type": "url", "url": upstream.url + "/mcp"}}
        httpx2.post(served.url + "/v1/mcp_servers", headers=rest, json=registered).raise_for_status()
        created = httpx2.post(
            served.url + "/v1/mcp_virtual_servers",
            headers=rest,
            json={"name": f"{name}-vs", "servers": [{"server": name, "tools": ["echo", "explode", "add"]}]},
        )
        created.raise_for_status()

        async def calls() -> None:
            async with (
                httpx2.AsyncClient(headers=rest, timeout=60) as http,
                Client(
                    streamable_http_client(f"{served.url}/mcp/{name}-vs", http_client=http), mode="auto"
                ) as mcp,
            ):
                for text in ("one", "two"):
                    assert text_of(await mcp.call_tool("echo", {"text": text})) == f"alpha echo: {text}"
                assert (await mcp.call_tool("explode", {"reason": "boom"})).is_error

        with ThreadPoolExecutor(1) as thread:  # Playwright's sync API holds this thread's loop
            thread.submit(anyio.run, calls).result()
        _open(page, served, api_key, "#/mcp")
        server = page.locator(f'section.virtual-server[data-name="{name}-vs"]')
        expect(server.locator('tr[data-tool="echo"] .calls')).to_have_text("2")
        expect(server.locator('tr[data-tool="echo"] .errors')).to_have_text("0")
        expect(server.locator('tr[data-tool="explode"] .calls')).to_have_text("1")
        expect(server.locator('tr[data-tool="explode"] .errors')).to_have_text("1")
        expect(server.locator('tr[data-tool="add"] .calls')).to_have_text("0")
        expect(page.locator("#resource-note")).to_contain_text("audit log")
    finally:
        upstream.stop()


def test_a_slow_earlier_load_never_replaces_the_filtered_page(
    page: Page, served: ServerProcess, api_key: str, client: anthropic.Anthropic
) -> None:
    """The list's first, unfiltered load is held at the network until the filtered page is on
    screen; when it is let through, the filtered page stays (only the newest refresh renders)."""
    env = client.beta.environments.create(name="stale-" + secrets.token_hex(3))
    agent = client.beta.agents.create(name="stale", model="claude-sonnet-4-6")
    mine = client.beta.sessions.create(agent=agent.id, environment_id=env.id).id
    client.beta.sessions.create(
        agent=agent.id, environment_id=client.beta.environments.create(name="other").id
    )
    held: list[Any] = []

    def hold_unfiltered(route: Any) -> None:
        if "environment_id" in route.request.url or held:
            route.continue_()
        else:
            held.append(route)  # the first unfiltered list request: answered later

    _open(page, served, api_key)
    page.route(re.compile(r".*/v1/sessions\?.*"), hold_unfiltered)
    page.evaluate("location.hash = '#/agents'")  # leave the list, and come back to a fresh load
    page.evaluate("location.hash = '#/'")
    rows = page.locator("#sessions tbody tr")
    page.wait_for_function("() => document.querySelector('#f-environment').options.length > 1")
    page.select_option("#f-environment", env.id)
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-session-id", mine)
    assert held, "the unfiltered load was not held"

    settled = int(page.locator("#sessions").get_attribute("data-settled") or 0)
    held[0].continue_()
    page.wait_for_function(f"() => Number(document.querySelector('#sessions').dataset.settled) > {settled}")
    expect(rows).to_have_count(1)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.sessionId)") == [mine]
