"""``tether environments|vaults|tunnels|webhooks|mcp-servers|virtual-servers|agents|sessions``
create/list/show/update/archive/delete against the suite's gateway, each effect checked
through the SDK; ``--output`` forms; cursor pagination; ``--help`` on every option."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import anthropic
import pytest
import yaml

from gateway import cli
from tests.conftest import Scripts
from tests.support.processes import ServerProcess
from tests.support.sessions import send_and_stream, user_message


class Tether:
    """Runs ``tether ...`` in-process against the gateway; returns (status, stdout, stderr)."""

    def __init__(self, gateway: ServerProcess, api_key: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.gateway, self.api_key, self.capsys = gateway, api_key, capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            cli.main([*argv, "--gateway", self.gateway.url, "--api-key", self.api_key])
        captured = self.capsys.readouterr()
        code = exited.value.code
        return (code if isinstance(code, int) else 1), captured.out, captured.err

    def json(self, *argv: str) -> Any:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)

    def lines(self, *argv: str) -> list[Any]:
        code, out, err = self(*argv, "--json")
        assert code == 0, err
        return [json.loads(line) for line in out.splitlines()]


@pytest.fixture
def tether(gateway: ServerProcess, api_key: str, capsys: pytest.CaptureFixture[str]) -> Tether:
    return Tether(gateway, api_key, capsys)


def test_environments_round_trip(tether: Tether, client: anthropic.Anthropic, tmp_path: Path) -> None:
    created = tether.json("environments", "create", "--name", "cli-env", "--metadata", "team=ops")
    seen = client.beta.environments.retrieve(created["id"])
    assert (seen.name, seen.metadata) == ("cli-env", {"team": "ops"})

    code, table, _ = tether("environments", "list", "--limit", "100")
    assert code == 0 and table.splitlines()[0].split() == ["ID", "NAME", "TYPE", "CREATED", "ARCHIVED"]
    assert any(line.startswith(created["id"]) and "cli-env" in line for line in table.splitlines())

    updated = tether.json("environments", "update", created["id"], "--description", "from the CLI")
    assert (
        updated["description"]
        == client.beta.environments.retrieve(created["id"]).description
        == "from the CLI"
    )

    code, shown, _ = tether("environments", "show", created["id"], "--output", "yaml")
    assert code == 0 and yaml.safe_load(shown)["description"] == "from the CLI"

    tether.json("environments", "archive", created["id"])
    assert client.beta.environments.retrieve(created["id"]).archived_at is not None
    tether.json("environments", "delete", created["id"])
    with pytest.raises(anthropic.NotFoundError):
        client.beta.environments.retrieve(created["id"])

    # The rest of a body from a file; flags override its fields.
    body = tmp_path / "env.yaml"
    body.write_text("name: from-file\ndescription: in the file\nmetadata: {source: yaml}\n")
    from_file = tether.json("environments", "create", "--file", str(body), "--name", "flag-wins")
    seen = client.beta.environments.retrieve(from_file["id"])
    assert (seen.name, seen.description, seen.metadata) == ("flag-wins", "in the file", {"source": "yaml"})


def test_vault_credentials_never_print_the_secret(
    tether: Tether, client: anthropic.Anthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "cli-secret-" + "x" * 16
    monkeypatch.setenv("CLI_TEST_TOKEN", secret)
    vault = tether.json("vaults", "create", "--display-name", "cli-vault")
    assert client.beta.vaults.retrieve(vault["id"]).display_name == "cli-vault"

    outputs = []
    code, out, err = tether(
        "vaults", "credentials", "create", vault["id"], "--display-name", "cli-cred",
        "--bearer-for", "https://mcp.example.com/mcp", "--token-env", "CLI_TEST_TOKEN",
    )  # fmt: skip
    assert code == 0, err
    outputs.append(out + err)
    credential = client.beta.vaults.credentials.list(vault["id"]).data[0]
    assert credential.display_name == "cli-cred" and credential.auth.type == "static_bearer"
    for form in ("table", "json", "yaml"):
        for argv in (
            ("vaults", "credentials", "list", vault["id"]),
            ("vaults", "credentials", "show", vault["id"], credential.id),
        ):
            code, out, err = tether(*argv, "--output", form)
            assert code == 0, err
            assert credential.id in out
            outputs.append(out + err)
    assert not any(secret in output for output in outputs)

    tether.json("vaults", "credentials", "archive", vault["id"], credential.id)
    archived = client.beta.vaults.credentials.retrieve(credential.id, vault_id=vault["id"])
    assert archived.archived_at is not None
    tether.json("vaults", "archive", vault["id"])
    assert client.beta.vaults.retrieve(vault["id"]).archived_at is not None


def test_tunnels_create_list_archive(tether: Tether, client: anthropic.Anthropic) -> None:
    created = tether.json("tunnels", "create", "--display-name", "cli-tunnel")
    assert client.beta.tunnels.retrieve(created["id"]).display_name == "cli-tunnel"
    assert created["id"] in [t["id"] for t in tether.lines("tunnels", "list", "--limit", "100")]
    tether.json("tunnels", "archive", created["id"])
    assert client.beta.tunnels.retrieve(created["id"]).archived_at is not None


def test_webhooks_through_the_raw_routes(tether: Tether, client: anthropic.Anthropic) -> None:
    created = tether.json(
        "webhooks",
        "create",
        "--url",
        "https://hooks.example.com/tether",
        "--event-type",
        "session.status_idle",
    )
    assert created["secret"]  # shown once, at creation: the only time the receiver can learn it
    stored: Any = client.get(f"/v1/tether/webhooks/{created['id']}", cast_to=object)
    assert stored["url"] == "https://hooks.example.com/tether" and "secret" not in stored
    listed = tether.lines("webhooks", "list", "--limit", "100")
    assert created["id"] in [w["id"] for w in listed] and all("secret" not in w for w in listed)
    tether.json("webhooks", "delete", created["id"])
    with pytest.raises(anthropic.NotFoundError):
        client.get(f"/v1/tether/webhooks/{created['id']}", cast_to=object)


def test_mcp_servers_and_virtual_servers(tether: Tether, client: anthropic.Anthropic) -> None:
    server = tether.json("mcp-servers", "create", "--name", "cli-upstream", "--url", "http://127.0.0.1:9/mcp")
    stored: Any = client.get(f"/v1/mcp_servers/{server['id']}", cast_to=object)
    assert stored["transport"] == {"type": "url", "url": "http://127.0.0.1:9/mcp"}
    virtual = tether.json("virtual-servers", "create", "--name", "cli-virtual", "--server", "cli-upstream")
    assert virtual["path"] == "/mcp/cli-virtual"
    code, table, _ = tether("virtual-servers", "list")
    assert code == 0 and any(
        line.startswith(virtual["id"]) and "cli-upstream" in line for line in table.splitlines()
    )
    tether.json("virtual-servers", "update", virtual["id"], "--description", "via the CLI")
    updated: Any = client.get(f"/v1/mcp_virtual_servers/{virtual['id']}", cast_to=object)
    assert updated["description"] == "via the CLI"
    tether.json("virtual-servers", "delete", virtual["id"])
    tether.json("mcp-servers", "delete", server["id"])
    with pytest.raises(anthropic.NotFoundError):
        client.get(f"/v1/mcp_servers/{server['id']}", cast_to=object)


def test_agents_and_sessions_from_flags(tether: Tether, client: anthropic.Anthropic) -> None:
    agent = tether.json(
        "agents", "create", "--name", "cli-made", "--model", "claude-sonnet-4-6", "--system", "hi"
    )
    assert client.beta.agents.retrieve(agent["id"]).system == "hi"
    updated = tether.json("agents", "update", agent["id"], "--version", "1", "--system", "hello")
    assert updated["version"] == 2 and client.beta.agents.retrieve(agent["id"]).system == "hello"
    assert sorted(v["version"] for v in tether.lines("agents", "versions", agent["id"])) == [1, 2]

    environment = client.beta.environments.create(name="cli-sessions")
    session = tether.json(
        "sessions", "create", "--agent", agent["id"], "--environment", environment.id, "--title", "made here"
    )
    assert client.beta.sessions.retrieve(session["id"]).title == "made here"
    tether.json("sessions", "update", session["id"], "--title", "renamed")
    assert client.beta.sessions.retrieve(session["id"]).title == "renamed"
    tether.json("sessions", "archive", session["id"])
    assert client.beta.sessions.retrieve(session["id"]).archived_at is not None
    tether.json("sessions", "delete", session["id"])
    with pytest.raises(anthropic.NotFoundError):
        client.beta.sessions.retrieve(session["id"])
    tether.json("agents", "archive", agent["id"])
    assert client.beta.agents.retrieve(agent["id"]).archived_at is not None


def test_lists_page_with_a_printed_cursor(tether: Tether, client: anthropic.Anthropic) -> None:
    made = {client.beta.vaults.create(display_name=f"paged-{i}").id for i in range(3)}
    seen: list[str] = []
    cursor: list[str] = []
    for _ in range(500):
        code, out, err = tether("vaults", "list", "--limit", "2", "--json", *cursor)
        page = [json.loads(line)["id"] for line in out.splitlines()]
        assert code == 0 and 0 < len(page) <= 2, err
        seen += page
        if "more: --page " not in err:
            break
        cursor = ["--after", err.split("more: --page ", 1)[1].split()[0]]
    assert len(seen) == len(set(seen)) and made <= set(seen)
    every = {v["id"] for v in tether.lines("vaults", "list", "--limit", "1000")}
    assert set(seen) == every


def test_a_limit_over_one_page_then_the_cursor_lists_every_item_once(
    tether: Tether, client: anthropic.Anthropic
) -> None:
    """``--limit 150`` spans two server pages (100 each); the printed cursor must resume right
    after the 150th item, not after the 200th the second request could have fetched."""
    made = {client.beta.vaults.create(display_name=f"many-{i}").id for i in range(230)}
    every = [vault.id for vault in client.beta.vaults.list(limit=100)]

    code, out, err = tether("vaults", "list", "--limit", "150", "--json")
    first = [json.loads(line)["id"] for line in out.splitlines()]
    assert code == 0 and len(first) == 150 and "more: --page " in err, err
    cursor = err.split("more: --page ", 1)[1].split()[0]
    code, out, err = tether("vaults", "list", "--limit", "1000", "--json", "--page", cursor)
    rest = [json.loads(line)["id"] for line in out.splitlines()]

    assert code == 0 and "more: --page " not in err, err
    assert first + rest == every
    assert made <= set(every)


def test_sessions_pages_resume_under_a_filter(tether: Tether, client: anthropic.Anthropic) -> None:
    """The filter is the server's, so a page of a filtered list ends where the next begins."""
    agent = client.beta.agents.create(name="paged", model="claude-sonnet-4-6")
    here = client.beta.environments.create(name="paged-here").id
    elsewhere = client.beta.environments.create(name="paged-elsewhere").id
    made = []
    for i in range(5):
        client.beta.sessions.create(agent=agent.id, environment_id=elsewhere, title=f"other-{i}")
        made.append(client.beta.sessions.create(agent=agent.id, environment_id=here, title=f"mine-{i}").id)

    seen: list[str] = []
    cursor: list[str] = []
    while True:
        code, out, err = tether("sessions", "list", "--environment", here, "--limit", "2", "--json", *cursor)
        assert code == 0, err
        seen += [json.loads(line)["id"] for line in out.splitlines()]
        if "more: --page " not in err:
            break
        cursor = ["--page", err.split("more: --page ", 1)[1].split()[0]]

    assert seen == made[::-1]


def test_sessions_list_filters_and_flags_what_needs_attention(
    tether: Tether, client: anthropic.Anthropic, scripts: Scripts
) -> None:
    asking = {
        "type": "agent_toolset_20260401",
        "default_config": {"permission_policy": {"type": "always_ask"}},
    }
    waits = scripts.add([{"content": [{"type": "tool_use", "name": "bash", "input": {"command": "echo x"}}]}])
    fails = scripts.add(
        [{"fail_first": [{"status": 400, "type": "invalid_request_error", "message": "no"}], "content": []}]
    )
    here = client.beta.environments.create(name="filters-here").id
    there = client.beta.environments.create(name="filters-there").id
    waiting_agent = client.beta.agents.create(
        name="asks",
        model="claude-sonnet-4-6",
        system=waits,
        tools=[asking],  # type: ignore[list-item]
    )
    failing_agent = client.beta.agents.create(name="fails", model="claude-sonnet-4-6", system=fails)
    quiet = client.beta.sessions.create(agent=failing_agent.id, environment_id=here, title="needle-quiet").id
    broken = client.beta.sessions.create(agent=failing_agent.id, environment_id=here, title="broken").id
    waiting = client.beta.sessions.create(
        agent=waiting_agent.id, environment_id=there, title="needle-waiting"
    ).id
    send_and_stream(client, broken, [user_message("fail")], until="session.status_terminated")
    assert send_and_stream(client, waiting, [user_message("ask")])[-1].stop_reason.type == "requires_action"

    def ids(*flags: str) -> set[str]:
        return {s["id"] for s in tether.lines("sessions", "list", "--limit", "500", *flags)}

    assert ids("--environment", here) == {quiet, broken}
    assert ids("--environment", there) == {waiting}
    assert ids("--agent", waiting_agent.id) == {waiting}
    assert ids("--environment", here, "--status", "terminated") == {broken}
    assert ids("--environment", here, "--status", "idle") == {quiet}
    assert ids("--environment", there, "--status", "requires_action") == {waiting}
    assert ids("--environment", here, "--attention") == {broken}
    assert ids("--environment", there, "--attention") == {waiting}
    assert ids("--search", "needle-") >= {quiet, waiting} and broken not in ids("--search", "needle-")

    code, table, _ = tether("sessions", "list", "--limit", "500", "--environment", there)
    assert code == 0 and table.splitlines()[0].split()[:4] == ["ID", "STATUS", "AGENT", "ENVIRONMENT"]
    row = next(line.split() for line in table.splitlines() if line.startswith(waiting))
    assert row[1:4] == ["requires_action", "asks", there]


def _options(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.Action]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _options(child, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            found.append((path, action))
    return found


def test_every_option_of_the_client_commands_and_the_gateway_has_help() -> None:
    commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    families = (
        "gateway", "policy", "sessions", "agents", "environments", "vaults",
        "tunnels", "webhooks", "mcp-servers", "virtual-servers",
    )  # fmt: skip
    missing = [
        f"{path} {action.option_strings or action.dest}"
        for family in families
        for path, action in _options(commands.choices[family], f"tether {family}")
        if not action.help
    ]
    assert missing == []
    every = [path for family in families for path, _ in _options(commands.choices[family], family)]
    for path in ("sessions connect", "vaults credentials create", "webhooks delete", "agents show"):
        assert path in every
