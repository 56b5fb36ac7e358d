"""A non-streaming OpenAI Chat Completions reply -> an Anthropic message."""

from __future__ import annotations

import re

import pytest

from nonstop.wire.openai import LOCAL_THINKING_SIGNATURE, openai_to_anthropic_response


def reply(message: dict, finish: str | None = "stop", usage: dict | None = None) -> dict:
    resp: dict = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "qwen",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if usage is not None:
        resp["usage"] = usage
    return resp


def convert(resp: dict, **kw) -> dict:
    return openai_to_anthropic_response(resp, model="local-model", input_tokens_estimate=kw.pop("estimate", 50), **kw)


def test_text_reply():
    msg = convert(reply({"content": "Hello"}, usage={"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}))
    assert re.fullmatch(r"msg_\w+", msg.pop("id"))
    assert msg == {
        "type": "message", "role": "assistant", "model": "local-model",
        "content": [{"type": "text", "text": "Hello"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 2},
    }


def test_reasoning_text_and_tool_calls_in_order():
    msg = convert(reply({
        "reasoning_content": "think",
        "content": "Calling.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": '{"path": "a"}'}},
            {"id": "call 2", "type": "function", "function": {"name": "mcp__x_1234abcd", "arguments": ""}},
        ],
    }, "tool_calls"), tool_name_map={"mcp__x_1234abcd": "mcp__x.y"})
    assert msg["content"] == [
        {"type": "thinking", "thinking": "think", "signature": LOCAL_THINKING_SIGNATURE},
        {"type": "text", "text": "Calling."},
        {"type": "tool_use", "id": "call_1", "name": "read", "input": {"path": "a"}},
        {"type": "tool_use", "id": "call_2_54ec595470dd", "name": "mcp__x.y", "input": {}},
    ]
    assert msg["stop_reason"] == "tool_use"


def test_reasoning_under_the_short_name():
    msg = convert(reply({"reasoning": "r", "content": None}))
    assert msg["content"] == [{"type": "thinking", "thinking": "r", "signature": LOCAL_THINKING_SIGNATURE}]


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), (None, "end_turn"), ("weird", "end_turn"),
])
def test_stop_reasons(finish, stop):
    assert convert(reply({"content": "x"}, finish))["stop_reason"] == stop


def test_tool_use_wins_over_a_wrong_finish_reason():
    msg = convert(reply({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "stop"))
    assert msg["stop_reason"] == "tool_use"


@pytest.mark.parametrize(("arguments", "expected"), [
    ('{"a": 1}', {"a": 1}),
    ("", {}),
    (None, {}),
    ({"already": "parsed"}, {"already": "parsed"}),
    ('"{\\"a\\": 1}"', {"a": 1}),
    ('{"a": "trunc', {"a": "trunc"}),
    ("oops", {"_raw": "oops"}),
    ("[1, 2]", {"_raw": "[1, 2]"}),
])
def test_arguments_parsing(arguments, expected):
    msg = convert(reply({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}]}))
    assert msg["content"][0]["input"] == expected


def test_missing_ids_are_generated_and_duplicates_made_unique():
    msg = convert(reply({"tool_calls": [
        {"function": {"name": "f", "arguments": "{}"}},
        {"id": "same", "function": {"name": "f", "arguments": "{}"}},
        {"id": "same", "function": {"name": "f", "arguments": "{}"}},
    ]}))
    ids = [b["id"] for b in msg["content"]]
    assert ids[0].startswith("toolu_")
    assert ids[1] == "same" and ids[2] != "same"
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", i) for i in ids)


def test_legacy_function_call():
    msg = convert(reply({"function_call": {"name": "f", "arguments": '{"q": 1}'}}, "function_call"))
    assert msg["content"][0]["name"] == "f" and msg["content"][0]["input"] == {"q": 1}
    assert msg["stop_reason"] == "tool_use"


def test_cached_tokens_are_not_input_tokens():
    msg = convert(reply({"content": "x"}, usage={"prompt_tokens": 100, "completion_tokens": 3,
                                                 "prompt_tokens_details": {"cached_tokens": 80}}))
    assert msg["usage"] == {"input_tokens": 20, "output_tokens": 3, "cache_read_input_tokens": 80}


def test_usage_is_estimated_when_missing():
    msg = convert(reply({"content": "a" * 21}), estimate=0)
    assert msg["usage"] == {"input_tokens": 1, "output_tokens": 6}


def test_content_parts_list():
    msg = convert(reply({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}))
    assert msg["content"] == [{"type": "text", "text": "ab"}]


@pytest.mark.parametrize("resp", [
    {}, {"choices": []}, {"choices": [None]}, {"choices": [{"message": None}]},
    {"choices": [{"message": {"tool_calls": [None, {"function": None}, {"function": {"name": ""}}]}}]},
])
def test_empty_or_odd_replies_give_a_valid_empty_message(resp):
    msg = convert(resp)
    assert msg["content"] == []
    assert msg["stop_reason"] == "end_turn"
    assert msg["usage"]["input_tokens"] >= 1
