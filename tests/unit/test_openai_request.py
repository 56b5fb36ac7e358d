"""Anthropic Messages request -> OpenAI Chat Completions request."""

from __future__ import annotations

import json
import re

import pytest

from nonstop.wire.openai import (
    TOOL_ERROR_PREFIX,
    TOOL_NAME_MAP_KEY,
    anthropic_to_openai_request,
    openai_tool_name,
    tool_name_map_for,
)

PNG = "iVBORw0KGgo="


def convert(req: dict, **kw) -> dict:
    args = {"model": "local", "max_tokens": 1024, "stream": False} | kw
    return anthropic_to_openai_request(req, **args)


def msgs(*messages: dict, **extra) -> dict:
    return {"model": "claude-x", "max_tokens": 100, "messages": list(messages), **extra}


def user(content) -> dict:
    return {"role": "user", "content": content}


def assistant(content) -> dict:
    return {"role": "assistant", "content": content}


# --- basics ------------------------------------------------------------------------------


def test_minimal_request():
    out = convert(msgs(user("hi")))
    assert out == {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100, "stream": False}


def test_streaming_asks_for_usage():
    out = convert(msgs(user("hi")), stream=True)
    assert out["stream"] is True
    assert out["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("asked", "cap", "sent"), [(128000, 4096, 4096), (100, 4096, 100), (None, 2048, 2048), (0, 512, 512), (True, 512, 512)])
def test_max_tokens_is_capped(asked, cap, sent):
    req = msgs(user("hi"))
    req["max_tokens"] = asked
    assert convert(req, max_tokens=cap)["max_tokens"] == sent


def test_sampling_parameters_and_stop_sequences():
    out = convert(msgs(user("hi"), temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["END", ""]))
    assert (out["temperature"], out["top_p"], out["top_k"], out["stop"]) == (0.2, 0.9, 40, ["END"])


def test_fields_a_local_openai_server_cannot_use_are_dropped():
    req = msgs(
        user("hi"),
        metadata={"user_id": "u"}, context_management={"edits": []}, output_config={"effort": "high"},
        service_tier="auto", container="c", mcp_servers=[{}], thinking={"type": "adaptive"}, cache_control={"type": "ephemeral"},
    )
    out = convert(req)
    assert set(out) == {"model", "messages", "max_tokens", "stream"}


# --- system ------------------------------------------------------------------------------


def test_system_blocks_and_system_messages_merge_into_one_leading_message():
    req = msgs(
        user("q1"), {"role": "system", "content": "late rule"}, assistant("a1"),
        {"role": "system", "content": [{"type": "text", "text": "later rule"}]}, user("q2"),
        system=[{"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "two"}],
    )
    out = convert(req)
    assert out["messages"][0] == {"role": "system", "content": "one\n\ntwo\n\nlate rule\n\nlater rule"}
    assert [m["role"] for m in out["messages"]] == ["system", "user", "assistant", "user"]


def test_system_string():
    assert convert(msgs(user("x"), system="be brief"))["messages"][0] == {"role": "system", "content": "be brief"}


# --- user content ------------------------------------------------------------------------


def test_user_blocks_become_parts_and_images_data_urls():
    out = convert(msgs(user([
        {"type": "text", "text": "look", "cache_control": {"type": "ephemeral"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
    ])))
    assert out["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}},
    ]}]


def test_a_single_text_block_becomes_a_string():
    assert convert(msgs(user([{"type": "text", "text": "only"}])))["messages"] == [{"role": "user", "content": "only"}]


@pytest.mark.parametrize(("block", "text"), [
    ({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc body"}}, "doc body"),
    ({"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "p1"}, {"type": "text", "text": "p2"}]}}, "p1\np2"),
    ({"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}, "[document block omitted]"),
    ({"type": "image", "source": {"type": "file", "file_id": "file_1"}}, "[image block omitted]"),
    ({"type": "search_result", "source": "x", "title": "t", "content": []}, "[search_result block omitted]"),
])
def test_other_blocks_become_text(block, text):
    out = convert(msgs(user([block, {"type": "text", "text": "q"}])))
    assert out["messages"][0]["content"][0] == {"type": "text", "text": text}


# --- tools and tool history --------------------------------------------------------------


def test_tool_round_with_results_errors_and_side_content():
    req = msgs(
        user("do it"),
        assistant([
            {"type": "thinking", "thinking": "plan", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xx"},
            {"type": "text", "text": "Running two tools."},
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a"}},
            {"type": "tool_use", "id": "toolu_2", "name": "shot", "input": {}},
        ]),
        user([
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "file body"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": [
                {"type": "text", "text": "partial"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
                {"type": "text", "text": "failed"},
            ]},
            {"type": "text", "text": "and then?"},
        ]),
    )
    out = convert(req)["messages"]
    assert out[1] == {
        "role": "assistant",
        "content": "Running two tools.",
        "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "read", "arguments": '{"path":"a"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "shot", "arguments": "{}"}},
        ],
    }
    assert out[2] == {"role": "tool", "tool_call_id": "toolu_1", "content": "file body"}
    assert out[3] == {"role": "tool", "tool_call_id": "toolu_2", "content": TOOL_ERROR_PREFIX + "partial\nfailed"}
    assert out[4] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
        {"type": "text", "text": "and then?"},
    ]}
    assert len(out) == 5


def test_assistant_with_only_tool_calls_has_null_content():
    out = convert(msgs(user("x"), assistant([{"type": "tool_use", "id": "t", "name": "f", "input": {"a": [1, "é"]}}])))
    msg = out["messages"][1]
    assert msg["content"] is None
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"a": [1, "é"]}


def test_assistant_text_blocks_are_joined_and_thinking_only_turns_stay():
    out = convert(msgs(user("x"), assistant([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]), user("y"),
                       assistant([{"type": "thinking", "thinking": "t", "signature": "s"}])))
    assert out["messages"][1] == {"role": "assistant", "content": "a\n\nb"}
    assert out["messages"][3] == {"role": "assistant", "content": ""}


def test_tool_result_only_turn_has_no_user_message():
    out = convert(msgs(user("x"), assistant([{"type": "tool_use", "id": "t", "name": "f", "input": {}}]),
                       user([{"type": "tool_result", "tool_use_id": "t"}])))
    assert out["messages"][-1] == {"role": "tool", "tool_call_id": "t", "content": ""}


def test_tools_are_mapped_and_server_tools_dropped():
    tools = [
        {"name": "read", "description": "Read a file", "input_schema": {"type": "object", "properties": {"p": {"type": "string"}}},
         "cache_control": {"type": "ephemeral"}},
        {"name": "lazy", "input_schema": {"type": "object"}, "defer_loading": True, "type": "custom"},
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
        {"name": "no_schema"},
    ]
    out = convert(msgs(user("x"), tools=tools))
    assert out["tools"] == [
        {"type": "function", "function": {"name": "read", "description": "Read a file",
                                          "parameters": {"type": "object", "properties": {"p": {"type": "string"}}}}},
        {"type": "function", "function": {"name": "lazy", "parameters": {"type": "object"}}},
        {"type": "function", "function": {"name": "no_schema", "parameters": {"type": "object", "properties": {}}}},
    ]


TOOLS = [{"name": "f", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "f"}, {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
    ({"type": "auto", "disable_parallel_tool_use": True}, {"tool_choice": "auto", "parallel_tool_calls": False}),
    ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
    (None, {}),
])
def test_tool_choice(choice, expected):
    req = msgs(user("x"), tools=TOOLS)
    if choice is not None:
        req["tool_choice"] = choice
    out = convert(req)
    assert {k: out[k] for k in ("tool_choice", "parallel_tool_calls") if k in out} == expected


def test_tool_choice_without_usable_tools_is_dropped():
    out = convert(msgs(user("x"), tools=[{"type": "web_search_20250305", "name": "web_search"}], tool_choice={"type": "any"}))
    assert "tools" not in out and "tool_choice" not in out


def test_invalid_tool_names_are_mapped_reversibly_everywhere():
    long_name = "mcp__" + "x" * 70
    req = msgs(
        user("x"),
        assistant([{"type": "tool_use", "id": "t1", "name": "mcp__srv__do.it", "input": {}}]),
        user([{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]),
        tools=[{"name": "mcp__srv__do.it", "input_schema": {}}, {"name": long_name, "input_schema": {}}, {"name": "fine", "input_schema": {}}],
        tool_choice={"type": "tool", "name": "mcp__srv__do.it"},
    )
    out = convert(req)
    names = out.pop(TOOL_NAME_MAP_KEY)
    wire = [t["function"]["name"] for t in out["tools"]]
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", n) for n in wire)
    assert wire[2] == "fine"
    assert names == {wire[0]: "mcp__srv__do.it", wire[1]: long_name}
    assert out["messages"][1]["tool_calls"][0]["function"]["name"] == wire[0]
    assert out["tool_choice"]["function"]["name"] == wire[0]
    assert tool_name_map_for(req) == names


def test_no_name_map_when_all_names_are_valid():
    assert TOOL_NAME_MAP_KEY not in convert(msgs(user("x"), tools=TOOLS))


def test_tool_name_mapping_is_deterministic_and_distinct():
    assert openai_tool_name("a.b") == openai_tool_name("a.b")
    assert openai_tool_name("a.b") != openai_tool_name("a:b")
    assert openai_tool_name("ok_name-1") == "ok_name-1"
    assert re.fullmatch(r"tool_[0-9a-f]{8}", openai_tool_name(""))
    assert re.fullmatch(r"mcp__a_b_[0-9a-f]{8}", openai_tool_name("mcp__a.b"))


# --- thinking ----------------------------------------------------------------------------


@pytest.mark.parametrize(("thinking", "config", "value"), [
    ({"type": "enabled", "budget_tokens": 2000}, None, "medium"),
    ({"type": "adaptive"}, {"effort": "low"}, "low"),
    ({"type": "adaptive"}, {"effort": "max"}, "high"),
    ({"type": "disabled"}, None, None),
    (None, None, None),
])
def test_thinking_sets_the_configured_reasoning_parameter(thinking, config, value):
    req = msgs(user("x"))
    if thinking:
        req["thinking"] = thinking
    if config:
        req["output_config"] = config
    out = convert(req, reasoning_param="reasoning_effort")
    assert out.get("reasoning_effort") == value


def test_thinking_is_dropped_without_a_reasoning_parameter():
    assert "reasoning_effort" not in convert(msgs(user("x"), thinking={"type": "enabled", "budget_tokens": 1024}))


# --- robustness --------------------------------------------------------------------------


def test_odd_shapes_do_not_crash():
    req = {"messages": [None, "x", {"role": "tool", "content": "?"}, user(None), user(5), assistant(None), user([None, 3, "raw"])]}
    out = convert(req)
    assert [m["role"] for m in out["messages"]] == ["user", "user", "assistant", "user"]
    assert out["messages"][3] == {"role": "user", "content": "raw"}


def test_the_input_is_not_modified():
    req = msgs(user([{"type": "text", "text": "x", "cache_control": {}}]), system=[{"type": "text", "text": "s"}], tools=TOOLS)
    before = json.dumps(req, sort_keys=True)
    convert(req)
    assert json.dumps(req, sort_keys=True) == before
