"""Every example under ``examples/`` runs as a subprocess against a real gateway, and what it
claims to show is checked through the SDK: the session log, tool results, the upstreams.

One gateway serves them all, configured as each example's README says: the review policy
loaded, loopback webhook targets allowed, and (test-only knobs) a loopback TLS server standing
in for the public API host the vault example calls. The examples teach the suite's scripted
model their own turns (``TETHER_SCRIPTED_MODEL_URL``), as they do a gateway's embedded one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest
import yaml

from tests.support.egress import Received, RecordingServer, TestPKI
from tests.support.examples import EXAMPLES, example_env, run_example, session_of, start_example
from tests.support.processes import ServerProcess, running_server
from tests.support.self_hosted import eventually, sandbox_pids
from tunnel_agent.config import ConfigError, parse_config
from tunnel_agent.work_contract import SANDBOX_URL, WORKER_ID

POLICY = EXAMPLES / "policies_review" / "policy.yaml"
API_HOST = "api.example.test"
SECRET = "sk_example_e2e_" + "0123456789abcdef"


def _echo(received: Received) -> tuple[int, list[tuple[str, str]], bytes]:
    """``/anything`` answers with the request's headers, as httpbin.org does."""
    body = json.dumps({"path": received.path, "headers": dict(received.headers)}).encode()
    return 200, [("Content-Type", "application/json")], body


@pytest.fixture(scope="module")
def upstream_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("examples-pki"))


@pytest.fixture(scope="module")
def public_api(upstream_pki: TestPKI) -> Iterator[RecordingServer]:
    server = RecordingServer(tls=upstream_pki.server_context([API_HOST]), responder=_echo)
    yield server
    server.close()


@pytest.fixture(scope="module")
def examples_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    model_server: ServerProcess,
    api_key: str,
    upstream_pki: TestPKI,
    public_api: RecordingServer,
) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("examples-gateway")
    env = {
        "TETHER_API_KEYS": api_key,
        "TETHER_MODEL_BASE_URL": model_server.url,
        "ANTHROPIC_API_KEY": "",
        "TETHER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "TETHER_WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "TETHER_SANDBOX_ARGS": (
            f"--egress-resolve {API_HOST}=127.0.0.1:{public_api.port} --upstream-ca {upstream_pki.ca_path}"
        ),
    }
    args = ["gateway", "--port", "0", "--data-dir", str(data_dir), "--policy", str(POLICY)]
    with running_server(args, env) as server:
        server.data_dir = data_dir  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def sdk(examples_gateway: ServerProcess, api_key: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=examples_gateway.url, api_key=api_key, max_retries=0, timeout=30
    ) as client:
        yield client


@pytest.fixture
def env(examples_gateway: ServerProcess, api_key: str, model_server: ServerProcess) -> dict[str, str]:
    return example_env(examples_gateway.url, api_key, model_server.url)


def _log(client: anthropic.Anthropic, session_id: str) -> list[Any]:
    return list(client.beta.sessions.events.list(session_id))


def _text(event: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in event.content or [])


def _workspace(gateway: ServerProcess, session_id: str) -> Path:
    return gateway.view(Path(gateway.data_dir) / "workspaces" / session_id)  # type: ignore[attr-defined]


def test_quickstart_writes_and_reads_a_file_in_the_sandbox(
    sdk: anthropic.Anthropic, env: dict[str, str], examples_gateway: ServerProcess
) -> None:
    output = run_example("quickstart.py", [], env)

    session_id = session_of(output)
    log = _log(sdk, session_id)
    uses = [e for e in log if e.type == "agent.tool_use"]
    results = [e for e in log if e.type == "agent.tool_result"]
    assert [u.name for u in uses] == ["write", "read"]
    assert [bool(r.is_error) for r in results] == [False, False]
    assert "nothing lost at all." in _text(results[1])
    assert log[-1].type == "session.status_idle" and log[-1].stop_reason.type == "end_turn"
    assert "session.status_idle: end_turn" in output  # the trail it printed
    haiku = _workspace(examples_gateway, session_id) / "haiku.txt"
    assert haiku.read_text().startswith("Events in a log,")


def test_custom_tools_are_answered_by_the_client_with_its_own_data(
    sdk: anthropic.Anthropic, env: dict[str, str]
) -> None:
    output = run_example("custom_tools.py", [], env)

    log = _log(sdk, session_of(output))
    uses = [e for e in log if e.type == "agent.custom_tool_use"]
    answers = [e for e in log if e.type == "user.custom_tool_result"]
    assert [u.input for u in uses] == [{"order_id": "A-1001"}, {"order_id": "A-1002"}]
    assert [a.custom_tool_use_id for a in answers] == [u.id for u in uses]
    assert json.loads(_text(answers[0]))["status"] == "shipped"
    # The model read the client's answer: the scripted reply quotes it back.
    final = [e for e in log if e.type == "agent.message"][-1]
    assert '"reason": "address check"' in _text(final)
    assert log[-1].stop_reason.type == "end_turn"


def test_skills_and_files_place_the_upload_and_the_skill_read_only_and_the_model_uses_both(
    sdk: anthropic.Anthropic, env: dict[str, str]
) -> None:
    output = run_example("skills_and_files.py", [], env)

    session = sdk.beta.sessions.retrieve(session_of(output))
    [resource] = session.resources
    assert f"resource {resource.id} at /mnt/session/uploads/" in output
    assert session.agent.skills[0].type == "custom"
    log = _log(sdk, session.id)
    results = [e for e in log if e.type == "agent.tool_result"]
    assert [bool(r.is_error) for r in results] == [False, False], [_text(r) for r in results]
    assert "Total a score table" in _text(results[0])  # the skill's body, read on demand
    assert _text(results[1]).strip() == "3 rows, total score 17"
    assert "3 rows, total score 17" in _text([e for e in log if e.type == "agent.message"][-1])


def test_memory_and_dreams_save_a_lesson_read_it_back_and_dream_it_into_a_new_store(
    sdk: anthropic.Anthropic, env: dict[str, str]
) -> None:
    output = run_example("memory_and_dreams.py", [], env)

    store_id = re.search(r"^memory store (memstore_\w+)$", output, re.M)
    assert store_id, output
    memories = list(sdk.beta.memory_stores.memories.list(store_id[1], view="full"))
    assert [(m.path, m.content) for m in memories] == [
        ("/builds.md", "Builds are slow on one core: run make -j2.\n")
    ]
    [version] = sdk.beta.memory_stores.memory_versions.list(store_id[1])
    assert version.created_by.type == "session_actor"
    dream_id = re.search(r"^dream (drm_\w+) completed ", output, re.M)
    assert dream_id, output
    dream = sdk.beta.dreams.retrieve(dream_id[1])
    [dreamed] = sdk.beta.memory_stores.memories.list(dream.outputs[0].memory_store_id, view="full")
    assert dreamed.content is not None and "learned in two sessions" in dreamed.content
    log = _log(sdk, dream.session_id or "")
    assert "make -j2" in _text(next(e for e in log if e.type == "agent.tool_result"))


def test_scheduled_report_deploys_on_a_schedule_and_runs_once_now(
    sdk: anthropic.Anthropic, env: dict[str, str]
) -> None:
    output = run_example("scheduled_report.py", [], env)

    deployment_id = re.search(r"^deployment (depl_\w+) \(0 9 \* \* 1-5, Europe/London\)$", output, re.M)
    assert deployment_id, output
    deployment = sdk.beta.deployments.retrieve(deployment_id[1])
    assert deployment.status == "active" and deployment.schedule is not None
    assert output.count("  next fire ") == 5
    [run] = sdk.beta.deployment_runs.list(deployment_id=deployment.id).data
    assert run.trigger_context.type == "manual" and run.session_id == session_of(output)
    log = _log(sdk, run.session_id)
    assert _text(log[0]) == "Write this morning's status report."
    assert "agent.message: Status: all builds green" in output
    assert log[-1].stop_reason.type == "end_turn"


def test_policies_review_approves_one_call_and_denies_the_other(
    sdk: anthropic.Anthropic, env: dict[str, str], examples_gateway: ServerProcess
) -> None:
    output = run_example("policies_review/review.py", [], env)

    session_id = session_of(output)
    log = _log(sdk, session_id)
    uses = {e.input["file_path"]: e for e in log if e.type == "agent.tool_use"}
    assert {path: use.evaluated_permission for path, use in uses.items()} == {
        "/workspace/drafts/post.md": "allow",
        "/workspace/published/post.md": "ask",
        "/workspace/published/deploy.sh": "ask",
    }
    asked = next(e for e in log if e.type == "session.status_idle")
    assert asked.stop_reason.type == "requires_action"
    assert set(asked.stop_reason.event_ids) == {
        uses["/workspace/published/post.md"].id,
        uses["/workspace/published/deploy.sh"].id,
    }
    confirmations = {e.tool_use_id: e.result for e in log if e.type == "user.tool_confirmation"}
    assert confirmations == {
        uses["/workspace/published/post.md"].id: "allow",
        uses["/workspace/published/deploy.sh"].id: "deny",
    }
    results = {e.tool_use_id: e for e in log if e.type == "agent.tool_result"}
    assert not results[uses["/workspace/published/post.md"].id].is_error
    denied = results[uses["/workspace/published/deploy.sh"].id]
    assert denied.is_error and "Only Markdown may be published" in _text(denied)
    workspace = _workspace(examples_gateway, session_id)
    assert (workspace / "published" / "post.md").is_file()
    assert not (workspace / "published" / "deploy.sh").exists()
    assert log[-1].stop_reason.type == "end_turn"


def test_the_webhook_receiver_verifies_deliveries_and_refuses_forgeries(
    sdk: anthropic.Anthropic, env: dict[str, str], scripts: Any
) -> None:
    receiver = start_example("webhooks_receiver.py", ["--port", "0", "--register"], env)
    try:
        listening = receiver.wait_for(lambda line: line.startswith("listening on "), "the ready line")
        url = listening.removeprefix("listening on ")
        endpoint_id = receiver.wait_for(lambda line: line.startswith("registered "), "registration").split()[
            1
        ]
        assert endpoint_id in [e["id"] for e in sdk.get("/v1/tether/webhooks", cast_to=object)["data"]]  # type: ignore[index]

        marker = scripts.add([{"content": [{"type": "text", "text": "hello, hooks"}]}])
        agent = sdk.beta.agents.create(name="hooked", model="claude-sonnet-4-6", system=marker)
        environment = sdk.beta.environments.create(name="hooked")
        session = sdk.beta.sessions.create(agent=agent.id, environment_id=environment.id)
        with sdk.beta.sessions.events.stream(session.id) as stream:
            sdk.beta.sessions.events.send(
                session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": "hi"}]}]
            )
            next(e for e in stream if e.type == "session.status_idle")
        receiver.wait_for(
            lambda line: line == f"verified session.status_idle {session.id} end_turn", "the idle delivery"
        )
        receiver.wait_for(lambda line: line == f"verified session.status_running {session.id}", "running")

        forged = httpx2.post(
            url,
            content=b'{"type":"session.status_idle"}',
            headers={"webhook-id": "sevt_x", "webhook-timestamp": "1", "webhook-signature": "v1,AAAA"},
        )
        assert forged.status_code == 401
        receiver.wait_for(lambda line: line.startswith("refused: "), "the refusal")
    finally:
        receiver.stop()
    receiver.wait_for(lambda line: line == f"unregistered {endpoint_id}", "the endpoint's removal")
    remaining = sdk.get("/v1/tether/webhooks", cast_to=object)["data"]  # type: ignore[index]
    assert endpoint_id not in [e["id"] for e in remaining]


def test_the_mcp_gateway_example_registers_serves_and_calls_a_tool(
    sdk: anthropic.Anthropic, env: dict[str, str]
) -> None:
    registered = run_example("mcp_gateway/register.py", ["--token", "examples-test"], env)
    assert "/mcp/examples" in registered
    token = re.search(r"^export TETHER_MCP_TOKEN=(\S+)$", registered, re.MULTILINE)
    assert token, registered

    called = run_example("mcp_gateway/client.py", ["vault"], {**env, "TETHER_MCP_TOKEN": token[1]})
    assert "tools: define, terms" in called
    assert "define('vault'): Encrypted credentials" in called
    audit: Any = sdk.get("/v1/mcp_audit?virtual_server=examples&limit=100", cast_to=object)
    calls = [r for r in audit["data"] if r["method"] == "tools/call"]
    assert any(r["caller"]["subject"] == "examples-test" and r["outcome"] == "ok" for r in calls), calls

    # Every client configuration points at the virtual server the example registers.
    configs = sorted((EXAMPLES / "mcp_gateway" / "clients").rglob("*.json"))
    assert len(configs) == 4
    for path in configs:
        text = path.read_text()
        json.loads(text)
        assert "http://127.0.0.1:8420/mcp/examples" in text and "Bearer " in text, path


def test_a_vault_credential_reaches_its_host_and_never_the_sandbox_or_the_log(
    sdk: anthropic.Anthropic,
    env: dict[str, str],
    examples_gateway: ServerProcess,
    public_api: RecordingServer,
    scripts: Any,
) -> None:
    output = run_example("vaults_egress/run.py", ["--host", API_HOST], {**env, "EXAMPLE_API_TOKEN": SECRET})

    assert "secret in the session log: no" in output
    call = next(r for r in public_api.received if r.path == "/anything")
    assert call.header("authorization") == f"Bearer {SECRET}"  # injected on the last hop
    log = _log(sdk, session_of(output))
    results = [_text(e) for e in log if e.type == "agent.tool_result"]
    assert "the sandbox sees API_TOKEN=tether-ph-" in results[0]
    # The echoed header came back scrubbed to the placeholder; the host outside is refused.
    assert "Bearer tether-ph-" in results[1] and "exit=0" in results[1]
    assert "example.com exit=0" not in results[2] and "example.com exit=" in results[2]
    everywhere = [json.dumps([e.model_dump(mode="json") for e in log]), output, *examples_gateway.output]
    assert not [text for text in everywhere if SECRET in text]
    assert SECRET not in json.dumps(scripts.requests_for("Tether vaults and egress example."))
    stored = b"".join(p.read_bytes() for p in Path(examples_gateway.data_dir).glob("tether.db*"))  # type: ignore[attr-defined]
    assert SECRET.encode() not in stored


def test_the_split_deployment_runs_the_sessions_tools_on_the_worker(
    sdk: anthropic.Anthropic, env: dict[str, str], examples_gateway: ServerProcess, tmp_path: Path
) -> None:
    workspaces = tmp_path / "onprem"
    output = run_example("split_deployment/run.py", ["--workspaces", str(workspaces)], env)

    session_id = session_of(output)
    log = _log(sdk, session_id)
    mcp_result = next(e for e in log if e.type == "agent.mcp_tool_result")
    # Reached through the tunnel, with the on-prem token added by the agent on the last hop.
    assert not mcp_result.is_error and _text(mcp_result) == "widgets: 42 in stock at warehouse B"
    written = next(e for e in log if e.type == "agent.tool_result")
    assert not written.is_error, _text(written)
    environment_id = sdk.beta.sessions.retrieve(session_id).environment_id
    item = next(w for w in sdk.beta.environments.work.list(environment_id) if w.data.id == session_id)
    assert item.metadata[WORKER_ID] == "site-a-worker"
    tunnel_domain = re.search(r"domain (\S+);", output)
    assert tunnel_domain and item.metadata[SANDBOX_URL].endswith(f".{tunnel_domain[1]}/mcp")
    # The workspace is on the worker's side, never the gateway's; its sandbox stopped with it.
    assert any(p.name.startswith(session_id) for p in workspaces.iterdir())
    assert not (Path(examples_gateway.data_dir) / "workspaces" / session_id).exists()  # type: ignore[attr-defined]
    eventually(lambda: session_id not in sandbox_pids(workspaces), "the on-prem sandbox to stop")


def test_the_sample_tunnel_yaml_is_a_valid_agent_configuration() -> None:
    data = yaml.safe_load((EXAMPLES / "split_deployment" / "tunnel.yaml").read_text())
    config = parse_config(data, {"INVENTORY_TOKEN": "on-prem-secret"})
    route = config.routes["inventory"]
    assert (route.host, route.port) == ("127.0.0.1", 9100)
    assert route.headers == {"authorization": "Bearer on-prem-secret"}  # names are lower-cased
    with pytest.raises(ConfigError):  # a missing variable stops the agent, as the README says
        parse_config(data, {})


def test_teaching_is_a_no_op_against_a_gateway_without_the_embedded_scripted_model(
    sdk: anthropic.Anthropic,
) -> None:
    """The examples gateway uses an external model (as one with ``ANTHROPIC_API_KEY`` does):
    ``/scripted-model`` is not there, and ``teach`` says so instead of failing."""
    spec = importlib.util.spec_from_file_location("examples_common", EXAMPLES / "_common.py")
    assert spec is not None and spec.loader is not None
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    assert "TETHER_SCRIPTED_MODEL_URL" not in os.environ
    assert common.teach(sdk, "never-matched", [{"content": [{"type": "text", "text": "x"}]}]) is False
