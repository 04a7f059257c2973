"""``tether demo``: start a gateway with its embedded defaults and run one session end to end.

The gateway runs as a child process exactly as ``tether gateway`` would; this
module is only a client of it, through the official ``anthropic`` SDK. On a host without
bubblewrap the demo still runs (its file tools need no sandbox process) and says in one
line how to enable ``bash``. It exits non-zero when the session ends in an error, or when
the scripted model's write-then-read round trip did not succeed, so a script can rely on it.
While it runs it prints the session's trail page (``/ui``); with ``--data-dir`` the data stays
there, without it the data lives in a temporary directory removed at exit (and no path into it
is printed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import settings
from gateway.serving import READY_PREFIX
from sandbox_server.backends import bash_notice

DEMO_MARKER = "tether-demo"
SYSTEM_PROMPT = (
    f"[{DEMO_MARKER}] You are a careful engineer. Use the workspace tools: write a short plan "
    "to /workspace/notes/plan.md, read it back to check it, then summarise what you did."
)
START_TIMEOUT = 30.0


def _start_gateway(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], Callable[[], str]]:
    """The gateway's process, and a wait for its URL: the caller imports the SDK meanwhile."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "gateway", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(READY_PREFIX) and not found:
                found.append(line[len(READY_PREFIX) :].strip())
                ready.set()
            elif settings.DEMO_VERBOSE.read(os.environ):
                print("  gateway | " + line.rstrip(), flush=True)
        ready.set()

    threading.Thread(target=pump, daemon=True).start()

    def url() -> str:
        if not ready.wait(START_TIMEOUT) or not found:
            process.kill()
            raise SystemExit("the gateway did not start; run `tether gateway` to see why")
        return found[0]

    return process, url


def _describe(event: Any) -> str:
    kind = event.type
    if kind in ("user.message", "agent.message"):
        return " ".join(block.text for block in event.content if block.type == "text")
    if kind in ("agent.tool_use", "agent.mcp_tool_use", "agent.custom_tool_use"):
        return f"{event.name} {json.dumps(event.input)[:160]}"
    if kind in ("agent.tool_result", "agent.mcp_tool_result"):
        text = " ".join(getattr(block, "text", "") for block in event.content or [])
        return ("ERROR " if event.is_error else "") + text.replace("\n", " | ")[:200]
    if kind == "span.model_request_end":
        usage = event.model_usage
        return f"input {usage.input_tokens} tokens, output {usage.output_tokens} tokens"
    if kind == "session.status_idle":
        return f"stop_reason={event.stop_reason.type}"
    if kind == "session.error":
        return f"{event.error.type}: {event.error.message}"
    return ""


def run_demo(data_dir: str | None = None, port: int = 0) -> int:
    scratch = None if data_dir else tempfile.TemporaryDirectory(prefix="tether-demo-")
    root = Path(data_dir or scratch.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    process, started = _start_gateway(root, port)
    try:
        import anthropic  # seconds of imports, on the other core while the gateway starts

        url = started()
        api_key = next(iter(settings.API_KEYS.read(os.environ)), "") or (root / "api_key").read_text().strip()
        real_model = bool(settings.ANTHROPIC_API_KEY.read(os.environ))
        print(f"Tether gateway at {url}")
        print(f"API key (x-api-key): {api_key}")
        print(
            f"Model: {'Anthropic API' if real_model else 'the scripted model (set ANTHROPIC_API_KEY for Claude)'}"
        )
        notice = bash_notice(settings.SANDBOX_ARGS.read(os.environ))
        if notice is not None:
            print(f"Note: {notice}")
        print()
        client = anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0)
        agent = client.beta.agents.create(
            name="demo-engineer",
            model=settings.DEMO_MODEL.read(os.environ),
            system=SYSTEM_PROMPT,
            tools=[{"type": "agent_toolset_20260401"}],
        )
        environment = client.beta.environments.create(name="demo-sandbox")
        session = client.beta.sessions.create(
            agent=agent.id, environment_id=environment.id, title="Tether demo"
        )
        print(f"agent {agent.id} (v{agent.version}), environment {environment.id}, session {session.id}")
        print(f"Trail page (while the demo runs; API key as above): {url}/ui#/sessions/{session.id}\n")
        stop_reason = None
        problems: list[str] = []
        with client.beta.sessions.events.stream(session.id) as stream:
            client.beta.sessions.events.send(
                session.id,
                events=[
                    {
                        "type": "user.message",
                        "content": [{"type": "text", "text": "Plan the work in a file."}],
                    }
                ],
            )
            for number, event in enumerate(stream, start=1):
                print(f"{number:>3}  {event.type:<26} {_describe(event)}", flush=True)
                if event.type == "session.error" and event.error.retry_status.type != "retrying":
                    problems.append(f"session error: {_describe(event)}")
                elif event.type == "agent.tool_result" and event.is_error and not real_model:
                    problems.append(f"the scripted round trip failed: {_describe(event)}")
                if event.type == "session.status_idle":
                    stop_reason = event.stop_reason.type
                    break
        finished = client.beta.sessions.retrieve(session.id)
        usage = finished.usage
        print(f"\nsession {finished.status}; tokens in {usage.input_tokens}, out {usage.output_tokens}")
        plan = root / "workspaces" / session.id / "notes" / "plan.md"
        # The gateway mounts workspaces in its own mount namespace: look through its eyes.
        seen = Path(f"/proc/{process.pid}/root{plan.resolve()}")
        if seen.exists():
            # A temporary data dir is gone once the demo exits: name the file as the agent sees it.
            shown = plan if scratch is None else Path("/workspace/notes/plan.md")
            print(f"workspace file {shown}:\n{seen.read_text()}")
        if scratch is None:
            print(
                f"Data kept in {root}: `tether gateway --data-dir {root}` serves it again, trail page at /ui"
            )
        else:
            print("The demo's data was temporary and is removed now (`tether demo --data-dir DIR` keeps it)")
        if stop_reason != "end_turn" or finished.status == "terminated":
            problems.append(f"the session ended {finished.status} (stop_reason={stop_reason})")
        for problem in problems:
            print(f"demo failed: {problem}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        if scratch is not None:
            scratch.cleanup()
