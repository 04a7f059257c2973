"""Prompt caching: tokens billed for a 30-turn session with caching on vs. off (the baseline).

Run: ``python bench/prompt_caching.py`` (``--turns N`` to change the session length).

Starts the scripted model, an MCP server (its ``add`` tool) and a gateway as real processes,
then runs the same scripted session twice through the SDK: an agent with
``tether.prompt_caching=off`` (the baseline) and one with it ``on`` (the default). Each turn
is a user message, a tool call and an answer: two model calls. The figures are the usage the
scripted model reported (it models the API's prompt cache, see
``gateway/scripted_model/cache.py``), summed over the session's ``span.model_request_end``
events and checked against the session's ``usage``.

The cost-weighted total counts input-side tokens at the published ratios (cache write 1.25x,
cache read 0.1x the input price); the dollar figure adds output at Claude Sonnet 4.x list
prices ($3 input, $15 output per million tokens).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import anthropic
import httpx2

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.processes import running_server  # noqa: E402
from tests.support.sessions import send_and_stream, user_message  # noqa: E402

FIELDS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
WRITE, READ = 1.25, 0.1
INPUT_USD, OUTPUT_USD = 3.0, 15.0
SYSTEM_RULES = 60
"""Lines of agent instructions in the system prompt (about 2,000 tokens, a modest real prompt)."""


def system_prompt(marker: str) -> str:
    rules = [
        f"{n}. When the user asks for arithmetic, call the add tool rather than computing it yourself; "
        "report the result and say how you got it."
        for n in range(1, SYSTEM_RULES + 1)
    ]
    return f"You are a careful calculator agent ({marker}).\n" + "\n".join(rules)


def script(turns: int) -> list[dict[str, Any]]:
    """Two model calls per user turn: the tool call, then an answer quoting its result."""
    steps: list[dict[str, Any]] = []
    for n in range(turns):
        steps.append({"content": [{"type": "tool_use", "name": "add", "input": {"a": n, "b": n + 1}}]})
        answer = (
            f"Turn {n + 1}: {n} + {n + 1} = {{{{last_tool_result}}}}. I used the add tool, as instructed, "
            "and the result above is exactly what it returned; ask for the next pair whenever you like."
        )
        steps.append({"content": [{"type": "text", "text": answer}]})
    return steps


def run_session(
    client: anthropic.Anthropic, model_url: str, mcp_url: str, environment_id: str, caching: str, turns: int
) -> dict[str, int]:
    marker = f"bench-{secrets.token_hex(6)}"
    httpx2.post(f"{model_url}/_scripts", json={"match": marker, "turns": script(turns)}).raise_for_status()
    agent = client.beta.agents.create(
        name=f"calculator-{caching}",
        model="claude-sonnet-4-6",
        system=system_prompt(marker),
        mcp_servers=[{"type": "url", "name": "calc", "url": mcp_url}],
        tools=[
            {
                "type": "mcp_toolset",
                "mcp_server_name": "calc",
                "default_config": {"permission_policy": {"type": "always_allow"}},
            }
        ],
        metadata={"tether.prompt_caching": caching},
    )
    session = client.beta.sessions.create(agent=agent.id, environment_id=environment_id)
    for n in range(turns):
        events = send_and_stream(client, session.id, [user_message(f"Please add {n} and {n + 1}.")])
        if events[-1].stop_reason.type != "end_turn":
            raise SystemExit(f"turn {n + 1} did not end normally: {events[-1]}")
    listed = client.beta.sessions.events.with_raw_response.list(session.id, limit=1000)
    ends = [e for e in listed.http_response.json()["data"] if e["type"] == "span.model_request_end"]
    totals = {name: sum(e["model_usage"][name] for e in ends) for name in FIELDS}
    totals["calls"] = len(ends)
    usage = client.beta.sessions.retrieve(session.id).usage
    creation = usage.cache_creation.ephemeral_5m_input_tokens if usage.cache_creation else 0
    reported = (usage.input_tokens, creation, usage.cache_read_input_tokens, usage.output_tokens)
    if reported != tuple(totals[name] for name in FIELDS):
        raise SystemExit(f"session usage {reported} disagrees with the model calls' {totals}")
    return totals


def weighted(totals: dict[str, int]) -> float:
    return (
        totals["input_tokens"]
        + WRITE * totals["cache_creation_input_tokens"]
        + READ * totals["cache_read_input_tokens"]
    )


def dollars(totals: dict[str, int]) -> float:
    return (weighted(totals) * INPUT_USD + totals["output_tokens"] * OUTPUT_USD) / 1_000_000


def report(turns: int, rows: dict[str, dict[str, int]]) -> None:
    print(f"\n{turns}-turn scripted session, {rows['off']['calls']} model calls each (tokens ~ chars/4)\n")
    print("| caching | input | cache write | cache read | output | cost-weighted input | $ (Sonnet) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode in ("off", "on"):
        t = rows[mode]
        print(
            f"| {mode} | {t['input_tokens']:,} | {t['cache_creation_input_tokens']:,} | "
            f"{t['cache_read_input_tokens']:,} | {t['output_tokens']:,} | {weighted(t):,.0f} | "
            f"{dollars(t):.4f} |"
        )
    print(
        f"\ncaching on / off: cost-weighted input x{weighted(rows['on']) / weighted(rows['off']):.3f}, "
        f"dollars x{dollars(rows['on']) / dollars(rows['off']):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    api_key = "bench-" + secrets.token_hex(8)
    with (
        tempfile.TemporaryDirectory() as data_dir,
        running_server(["model", "--port", "0"]) as model,
        running_server(["--port", "0"], module="tests.support.upstream_mcp") as upstream,
        running_server(
            ["gateway", "--port", "0", "--data-dir", data_dir],
            {"TETHER_API_KEYS": api_key, "TETHER_MODEL_BASE_URL": model.url, "ANTHROPIC_API_KEY": ""},
        ) as gateway,
        anthropic.Anthropic(base_url=gateway.url, api_key=api_key, max_retries=0, timeout=60) as client,
    ):
        environment = client.beta.environments.create(name="bench-caching")
        rows = {
            mode: run_session(client, model.url, upstream.url + "/mcp", environment.id, mode, args.turns)
            for mode in ("off", "on")
        }
    report(args.turns, rows)


if __name__ == "__main__":
    main()
