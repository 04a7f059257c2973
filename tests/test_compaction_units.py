"""The pure parts of context management: sizing, clearing, where to cut, the compacted
conversation, and how the scripted model answers and counts turns across a compaction."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import InvalidRequest
from gateway.harness import context_budget as sizing
from gateway.harness.compaction import (
    SUMMARY_INSTRUCTION,
    SUMMARY_SYSTEM_PROMPT,
    choose_cut,
    cut_points,
    summary_request,
)
from gateway.harness.context import build_messages
from gateway.harness.request import build_request
from gateway.resources import agent_settings
from gateway.scripted_model import compaction as scripted
from gateway.scripted_model.script import Reply, Script, ScriptBook
from gateway.sessionlog.transcript import COMPACTION_FIELD, CONTEXT_SEQ_FIELD, Transcript
from gateway.store.base import StoredEvent
from gateway.tools.toolbox import build_toolbox

MODEL = "claude-sonnet-4-6"


def _log(*bodies: dict[str, Any]) -> Transcript:
    events = []
    for seq, body in enumerate(bodies, start=1):
        body = {"id": body.get("id", f"sevt_{seq}"), **body}
        events.append(StoredEvent("sesn_u", seq, body["id"], body["type"], body))
    return Transcript.from_events(events)


def _user(text: str) -> dict[str, Any]:
    return {"type": "user.message", "content": [{"type": "text", "text": text}]}


def _said(text: str) -> dict[str, Any]:
    return {"type": "agent.message", "content": [{"type": "text", "text": text}]}


def _start(context_seq: int, chars: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "span.model_request_start", CONTEXT_SEQ_FIELD: context_seq, **extra}
    if chars is not None:
        body[sizing.REQUEST_CHARS_FIELD] = chars
    return body


def _end(start: str, tokens: int = 10, is_error: bool = False, **extra: Any) -> dict[str, Any]:
    usage = {
        "input_tokens": tokens,
        "output_tokens": 1,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    return {
        "type": "span.model_request_end",
        "model_request_start_id": start,
        "is_error": is_error,
        "model_usage": usage,
        **extra,
    }


def _use(name: str = "bash") -> dict[str, Any]:
    return {"type": "agent.tool_use", "name": name, "input": {}, "evaluated_permission": "allow"}


def _result(use: str, text: str = "ok") -> dict[str, Any]:
    return {"type": "agent.tool_result", "tool_use_id": use, "content": [{"type": "text", "text": text}]}


def _agent(metadata: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "model": {"id": MODEL},
        "system": "be brief",
        "tools": [],
        "mcp_servers": [],
        "metadata": metadata or {},
    }


# Sizing -------------------------------------------------------------------------------------


def test_the_budget_defaults_to_the_models_window_and_leaves_room_for_the_reply() -> None:
    assert sizing.window_for(MODEL) == 200_000
    assert sizing.window_for("some-other-model") == sizing.DEFAULT_WINDOW
    budget = sizing.Budget(4000, 256)
    assert budget.input_tokens == 3744
    assert (budget.clear_at, budget.compact_at) == (int(3744 * 0.70), int(3744 * 0.85))
    assert sizing.Budget(4000, 3900).input_tokens == 2000, "a huge max_tokens still leaves half the window"


def test_the_estimate_is_the_last_measurement_plus_the_change_at_four_characters_a_token() -> None:
    transcript = _log(
        _user("hi"),
        _start(1, chars=1000),
        _end("sevt_2", tokens=300),
        _start(3, chars=5000, **{COMPACTION_FIELD: True}),
        _end("sevt_4", tokens=9999, **{COMPACTION_FIELD: True}),  # a summary is not the context
        _start(5, chars=1200),
        _end("sevt_6", tokens=7777, is_error=True),  # nor is a failed request
    )
    measured = sizing.last_measurement(transcript)
    assert measured == sizing.Measurement(tokens=300, chars=1000)
    request = {"messages": [{"role": "user", "content": "x" * 1367}]}  # 1400 characters as JSON
    assert sizing.request_chars(request) == 1400
    assert sizing.estimate(request, measured) == 300 + 100


def test_without_a_measurement_the_whole_request_is_priced_at_four_characters_a_token() -> None:
    transcript = _log(_user("hi"), _start(1), _end("sevt_2", tokens=300))  # size not recorded
    assert sizing.last_measurement(transcript) is None
    assert sizing.estimate({"messages": "x" * 398}, None) == 100


def test_only_old_large_tool_results_are_cleared_and_the_input_is_not_changed() -> None:
    big = [{"type": "text", "text": "y" * 500}]
    small = [{"type": "text", "text": "tiny"}]
    contents = [big, small, big, big, big, big]
    messages: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "go"}]}]
    for n, content in enumerate(contents):
        messages.append(
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"t{n}", "name": "x", "input": {}}]}
        )
        result = {"type": "tool_result", "tool_use_id": f"t{n}", "content": content, "is_error": n == 0}
        messages.append({"role": "user", "content": [result]})

    cleared = sizing.clear_old_tool_results(messages)

    results = [m["content"][0] for m in cleared if m["content"][0]["type"] == "tool_result"]
    placeholder = [{"type": "text", "text": sizing.CLEARED}]
    assert [r["content"] for r in results] == [placeholder, small, placeholder, big, big, big]
    assert results[0]["is_error"] is True and results[0]["tool_use_id"] == "t0"
    assert messages[2]["content"][0]["content"] == big, "the built messages were copied, not edited"


def test_the_request_is_cleared_only_near_the_budget() -> None:
    transcript = _log(
        _user("go"),
        _use(),
        _result("sevt_2", "z" * 2000),
        _use(),
        _result("sevt_4", "z" * 2000),
        _use(),
        _result("sevt_6"),
        _use(),
        _result("sevt_8"),
        _use(),
        _result("sevt_10"),
    )
    toolbox = build_toolbox(_agent(), [], {})

    def results(metadata: dict[str, str]) -> list[str]:
        request = build_request(_agent(metadata), transcript, toolbox, 256, False)
        blocks = [b for m in request["messages"] for b in m["content"] if b["type"] == "tool_result"]
        return [b["content"][0]["text"][:5] for b in blocks]

    assert results({}) == ["zzzzz", "zzzzz", "ok", "ok", "ok"]  # 200k tokens: far from the limit
    small = {"tether.context_window_tokens": "1200"}
    assert results(small) == [sizing.CLEARED[:5]] * 2 + ["ok"] * 3
    assert results({**small, "tether.compaction": "off"}) == ["zzzzz", "zzzzz", "ok", "ok", "ok"]


# Where to cut -------------------------------------------------------------------------------


def test_a_cut_never_parts_a_tool_use_from_its_result() -> None:
    transcript = _log(
        _user("one"),  # 1
        _start(1),  # 2
        _use(),  # 3
        _end("sevt_2"),  # 4
        _result("sevt_3"),  # 5
        _start(5),  # 6
        _said("done"),  # 7
        _end("sevt_6"),  # 8
        {"type": "session.status_idle", "stop_reason": {"type": "end_turn"}},  # 9
        _user("two"),  # 10
    )
    assert cut_points(transcript, 0) == [1, 5, 9]
    assert cut_points(transcript, 5) == [9]
    assert cut_points(transcript, 9) == []


def test_a_message_that_arrived_during_a_request_is_not_cut_from_the_reply_after_it() -> None:
    transcript = _log(
        _user("one"),  # 1
        _start(1),  # 2
        _user("sent while the model answered"),  # 3: placed after the reply to "one"
        _said("reply to one"),  # 4
        _end("sevt_2"),  # 5
        _start(5),  # 6
        _said("reply to the second"),  # 7
        _end("sevt_6"),  # 8
        _user("three"),  # 9
    )
    assert cut_points(transcript, 0) == [1, 5, 8]


def test_the_cut_keeps_the_newest_turn_and_as_many_as_fit_the_tail_share() -> None:
    bodies: list[dict[str, Any]] = []
    for n in range(6):
        bodies += [_user(f"question {n} " + "q" * 200), _said(f"answer {n}")]
    transcript = _log(*bodies)
    points = cut_points(transcript, 0)
    assert points == [2, 4, 6, 8, 10]
    assert choose_cut(transcript, 0, tail_tokens=1) == 10, "the newest turn always stays"
    assert choose_cut(transcript, 0, tail_tokens=150) == 8
    assert choose_cut(transcript, 0, tail_tokens=10_000) == 2


# The compacted conversation -----------------------------------------------------------------


def _compacted_log() -> Transcript:
    return _log(
        _user("old question"),  # 1
        _said("old answer"),  # 2
        _user("new question"),  # 3
        _start(3, **{COMPACTION_FIELD: True}),  # 4
        _end("sevt_4", **{COMPACTION_FIELD: True}),  # 5
        {
            "type": "agent.thread_context_compacted",
            sizing.SUMMARY_FIELD: "they asked an old question",
            sizing.THROUGH_FIELD: 2,
        },
    )


def test_a_compacted_context_is_the_summary_then_the_events_after_the_cut() -> None:
    transcript = _compacted_log()
    through, first = sizing.resume_point(transcript)
    messages = build_messages(transcript, lambda use: use["name"], through, first)
    assert messages == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"{sizing.SUMMARY_INTRO}\n\nthey asked an old question"},
                {"type": "text", "text": "new question"},
            ],
        }
    ]
    again = Transcript.from_events(transcript.events)  # a restart: the same request from the log
    toolbox = build_toolbox(_agent(), [], {})
    assert build_request(_agent(), again, toolbox, 256) == build_request(_agent(), transcript, toolbox, 256)


def test_a_summarising_call_answers_no_input() -> None:
    transcript = _compacted_log()
    assert transcript.open_model_request is None
    assert transcript.needs_model(), "the new question still needs its answer"
    assert transcript.compacted is not None and transcript.compacted[sizing.THROUGH_FIELD] == 2


def test_the_summarising_request_has_its_own_prompt_and_ends_with_the_instruction() -> None:
    agent = {
        **_agent(),
        "tools": [
            {"type": "custom", "name": "lookup", "description": "d", "input_schema": {"type": "object"}}
        ],
    }
    toolbox = build_toolbox(agent, [], {})
    transcript = _log(_user("one"), _said("first"), _user("two"), _said("second"), _user("three"))
    request = summary_request(agent, transcript, toolbox, 4, sizing.Budget(4000, 256))
    assert request["system"].startswith(SUMMARY_SYSTEM_PROMPT) and request["system"].endswith("be brief")
    assert request["tool_choice"] == {"type": "none"} and request["tools"][0]["name"] == "lookup"
    assert request["max_tokens"] == sizing.Budget(4000, 256).summary_tokens
    assert [(m["role"], [b["text"] for b in m["content"]]) for m in request["messages"]] == [
        ("user", ["one"]),
        ("assistant", ["first"]),
        ("user", ["two"]),
        ("assistant", ["second"]),
        ("user", [SUMMARY_INSTRUCTION]),
    ]


# Settings -----------------------------------------------------------------------------------


def test_the_context_settings_are_checked_when_an_agent_is_saved() -> None:
    settings = agent_settings.parse({"tether.context_window_tokens": "4000", "tether.compaction": "off"})
    assert (settings.context_window_tokens, settings.compaction) == (4000, False)
    assert agent_settings.parse({}).compaction is None  # on by default
    with pytest.raises(InvalidRequest, match="integer from 1000 to 2000000"):
        agent_settings.parse({"tether.context_window_tokens": "10"})
    with pytest.raises(InvalidRequest, match="must be one of on, off"):
        agent_settings.parse({"tether.compaction": "sometimes"})


# The scripted model -------------------------------------------------------------------------


def _conversation(*texts: str, instruction: str = SUMMARY_INSTRUCTION) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for text in texts:
        messages += [
            {"role": "user", "content": [{"type": "text", "text": text}]},
            {"role": "assistant", "content": "ok"},
        ]
    return [*messages, {"role": "user", "content": [{"type": "text", "text": instruction}]}]


def test_the_scripted_model_recognises_the_harness_summarising_prompt() -> None:
    assert scripted.COMPACTION_MARKER in SUMMARY_SYSTEM_PROMPT
    assert scripted.is_compaction_request({"system": [{"type": "text", "text": SUMMARY_SYSTEM_PROMPT}]})
    assert not scripted.is_compaction_request({"system": "be brief"})


def test_the_digest_carries_the_turn_count_and_keeps_the_first_and_newest_lines() -> None:
    first = scripted.conversation_digest(_conversation("the code is 7", "b  \n c"))
    assert first == "[scripted summary: 2 assistant turns]\n- the code is 7\n- b c"

    texts = [f"{sizing.SUMMARY_INTRO}\n\n{first}", *(f"line {n}" for n in range(12))]
    second = scripted.conversation_digest(_conversation(*texts))
    lines = second.splitlines()
    assert lines[0] == "[scripted summary: 15 assistant turns]"
    assert lines[1:] == [
        "- the code is 7",
        "- b c",
        "- line 0",
        "- line 1",
        *(f"- line {n}" for n in range(6, 12)),
    ]
    assert scripted.context_summary(_conversation(*texts)) == first


def test_turn_selection_counts_the_turns_a_summary_replaced() -> None:
    book = ScriptBook(
        [
            Script.model_validate(
                {
                    "match": "m",
                    "turns": [{"content": [{"type": "text", "text": f"turn {n}"}]} for n in range(6)],
                }
            )
        ]
    )
    digest = "[scripted summary: 3 assistant turns]\n- hello"
    request = {
        "model": MODEL,
        "max_tokens": 10,
        "system": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"{sizing.SUMMARY_INTRO}\n\n{digest}"}]},
            {"role": "assistant", "content": "turn 3"},
            {"role": "user", "content": "next"},
        ],
    }
    reply = book.respond(request)
    assert isinstance(reply, Reply) and reply.content == [{"type": "text", "text": "turn 4"}]
    summarising = {**request, "system": f"{SUMMARY_SYSTEM_PROMPT}\n\nm", "messages": _conversation("x")}
    answer = book.respond(summarising)
    assert isinstance(answer, Reply)
    assert answer.content[0]["text"] == "[scripted summary: 1 assistant turns]\n- x"


def test_request_chars_is_the_json_length_of_each_part_whatever_the_blocks() -> None:
    tool_result = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "text", "text": 'ünïcode \u2028 "quoted" \\ \n'}],
        "is_error": True,
    }
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "b", "input": {"x": [1, 2.5, None]}}],
        },
        {"role": "user", "content": [tool_result, tool_result, {"type": "text", "text": "🙂"}]},
        {"role": "assistant", "content": "plain text content"},
        {"role": "user", "content": []},
        {"role": "user", "content": [{"type": "text", "text": "x"}], "extra": 1},
    ]
    request = {"model": "m", "system": "sys", "tools": [{"name": "t"}], "messages": messages}
    expected = sum(len(json.dumps(request[key])) for key in ("system", "tools", "messages"))
    assert sizing.request_chars(request) == expected
    assert sizing.request_chars(request) == expected  # the memo answers the same the second time
    assert sizing.request_chars({"messages": []}) == len("[]")
