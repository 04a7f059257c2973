"""A session's MCP tool call travels through the outbound tunnel to an on-prem server:
the real gateway process, a real ``tether tunnel`` agent and an on-prem MCP server only the
agent may reach. The on-prem credential is added by the agent and never seen by the gateway."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.conftest import Scripts
from tests.support.processes import ServerProcess, running_server
from tests.support.sessions import send_and_stream, user_message
from tests.support.tunnel_agents import start_agent, write_config
from tests.support.tunnel_onprem import fingerprint


@pytest.fixture(scope="module")
def onprem() -> Iterator[ServerProcess]:
    with running_server(["--port", "0"], module="tests.support.tunnel_onprem") as server:
        yield server


def test_a_session_reaches_an_onprem_mcp_server_through_the_tunnel(
    client: anthropic.Anthropic,
    gateway: ServerProcess,
    scripts: Scripts,
    environment: Any,
    onprem: ServerProcess,
    tmp_path: Path,
) -> None:
    onprem_secret = "crm-" + secrets.token_hex(16)
    tunnel = client.beta.tunnels.create(display_name="corp")
    token = client.beta.tunnels.reveal_token(tunnel.id).tunnel_token
    port = int(onprem.url.rsplit(":", 1)[1])
    config = write_config(
        tmp_path / "tunnel.yaml",
        [
            {
                "subdomain": "crm",
                "target": f"http://127.0.0.1:{port}",
                "headers": {"Authorization": "Bearer ${CRM_TOKEN}"},
            }
        ],
    )
    agent_process = start_agent(gateway.url, token, config, "agent-1", env={"CRM_TOKEN": onprem_secret})
    try:
        marker = scripts.add(
            [
                {"content": [{"type": "tool_use", "name": "whoami", "input": {}}]},
                {"content": [{"type": "text", "text": "done"}]},
            ]
        )
        agent = client.beta.agents.create(
            name="onprem-user",
            model="claude-sonnet-4-6",
            system=marker,
            mcp_servers=[{"type": "url", "name": "crm", "url": f"http://crm.{tunnel.domain}/mcp"}],
            tools=[
                {
                    "type": "mcp_toolset",
                    "mcp_server_name": "crm",
                    "default_config": {"permission_policy": {"type": "always_allow"}},
                }
            ],
        )
        session = client.beta.sessions.create(agent=agent.id, environment_id=environment.id)

        streamed = send_and_stream(client, session.id, [user_message("who am I on-prem?")])

        result = next(e for e in streamed if e.type == "agent.mcp_tool_result")
        assert not result.is_error, result.content[0].text
        assert result.content[0].text == fingerprint(f"Bearer {onprem_secret}")
        events = client.beta.sessions.events.with_raw_response.list(session.id).http_response.json()
        assert onprem_secret not in json.dumps(events)
        assert not [line for line in gateway.output if onprem_secret in line]
        assert onprem_secret not in json.dumps(scripts.requests_for(marker))
    finally:
        agent_process.stop()
