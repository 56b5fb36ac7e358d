"""The OpenAI front door, replies: an Anthropic message or stream of events -> a Chat
Completions reply or chunks (anthropic_response_to_openai, AnthropicToOpenAIStream)."""

from __future__ import annotations

import json

import pytest

from nonstop.wire.openai import AnthropicToOpenAIStream, anthropic_response_to_openai

# --- non-streaming replies ---------------------------------------------------------------


def test_reply_with_text_thinking_and_tools():
    msg = {
        "id": "msg_01AbC", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Reading."},
            {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"path": "a"}},
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}},
        ],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20},
    }
    out = anthropic_response_to_openai(msg, model="gpt-4o", created=123)
    assert out == {
        "id": "chatcmpl-01AbC", "object": "chat.completion", "created": 123, "model": "gpt-4o",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
            "role": "assistant", "content": "Reading.", "reasoning_content": "hmm",
            "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "read", "arguments": '{"path":"a"}'}}],
        }}],
        "usage": {"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135, "prompt_tokens_details": {"cached_tokens": 100}},
    }


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"), (None, "stop"),
])
def test_finish_reasons(stop, finish):
    out = anthropic_response_to_openai({"content": [{"type": "text", "text": "x"}], "stop_reason": stop}, model="m")
    assert out["choices"][0]["finish_reason"] == finish


def test_reply_with_only_tools_has_null_content():
    out = anthropic_response_to_openai({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}, model="m")
    assert out["choices"][0]["message"]["content"] is None


# --- streams -----------------------------------------------------------------------------


ANTHROPIC_STREAM = [
    ("message_start", {"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": {"input_tokens": 30, "output_tokens": 1, "cache_read_input_tokens": 70}}}),
    ("ping", {"type": "ping"}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "plan"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Hi"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("content_block_start", {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"x":'}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": " 1}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 2}),
    ("content_block_start", {"type": "content_block_start", "index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 3}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 12}}),
    ("message_stop", {"type": "message_stop"}),
]


def run_stream(events, include_usage=True):
    s = AnthropicToOpenAIStream(model="gpt-4o", completion_id="chatcmpl-1", include_usage=include_usage, created=7)
    chunks = []
    for etype, data in events:
        chunks.extend(s.feed(etype, data))
    chunks.extend(s.finish())
    return chunks


def test_stream_chunks():
    chunks = run_stream(ANTHROPIC_STREAM)
    assert all(c["id"] == "chatcmpl-1" and c["object"] == "chat.completion.chunk" and c["created"] == 7 and c["model"] == "gpt-4o" for c in chunks)
    deltas = [c["choices"][0]["delta"] if c["choices"] else None for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "plan"},
        {"content": "Hi"},
        {"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"x":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]},
        {"tool_calls": [{"index": 1, "id": "toolu_b", "type": "function", "function": {"name": "g", "arguments": ""}}]},
        {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},  # no input: "{}", which clients can parse
        {},
        None,
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 8 + ["tool_calls"]
    assert chunks[-1]["usage"] == {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112, "prompt_tokens_details": {"cached_tokens": 70}}
    args = "".join(c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in chunks[3:6])
    assert json.loads(args) == {"x": 1}


def test_stream_without_usage_option_ends_with_the_finish_chunk():
    chunks = run_stream(ANTHROPIC_STREAM, include_usage=False)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any("usage" in c for c in chunks)


def test_stream_cut_short_still_finishes():
    chunks = run_stream(ANTHROPIC_STREAM[:8])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert "usage" in chunks[-1]


def test_stream_error_event_becomes_an_error_chunk_and_ends_it():
    s = AnthropicToOpenAIStream(model="m", completion_id="c", include_usage=True, created=1)
    s.feed(*ANTHROPIC_STREAM[0])
    out = s.feed("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert out == [{"error": {"message": "Overloaded", "type": "overloaded_error", "param": None, "code": None}}]
    assert s.finish() == []
    assert s.feed(*ANTHROPIC_STREAM[7]) == []


def test_stream_content_inside_block_start_is_not_lost():
    events = [
        ANTHROPIC_STREAM[0],
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "early"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}}),
    ]
    chunks = run_stream(events)
    assert chunks[1]["choices"][0]["delta"] == {"content": "early"}
    assert chunks[3]["choices"][0]["delta"] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":1}'}}]}


def test_stream_ignores_junk():
    s = AnthropicToOpenAIStream(model="m", completion_id="c", include_usage=False, created=1)
    assert s.feed("content_block_delta", {"type": "content_block_delta", "index": 9, "delta": {"type": "text_delta", "text": "x"}}) == []
    assert s.feed("content_block_start", {"type": "content_block_start"}) == []
    assert s.feed("mystery", {"type": "mystery"}) == []
    assert s.feed("ping", None) == []  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [[0], {"i": 0}, "0", None, 0.0])
def test_a_delta_whose_index_is_not_an_integer_is_passed_over(index):
    s = AnthropicToOpenAIStream(model="m", completion_id="c", include_usage=False, created=1)
    s.feed("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    assert s.feed("content_block_delta", {"type": "content_block_delta", "index": index,
                                          "delta": {"type": "text_delta", "text": "x"}}) == []
    assert s.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "text_delta", "text": "y"}})[0]["choices"][0]["delta"] == {"content": "y"}


# --- the legacy `functions`: a call goes back as `function_call` -------------------------


def test_a_legacy_reply_holds_the_call_as_function_call():
    msg = {"id": "msg_1", "content": [{"type": "text", "text": "Checking."},
                                      {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}],
           "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 3}}
    choice = anthropic_response_to_openai(msg, model="gpt-4o", created=1, legacy=True)["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Checking.",
                                 "function_call": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    assert choice["finish_reason"] == "function_call"
    plain = anthropic_response_to_openai({**msg, "content": msg["content"][:1], "stop_reason": "end_turn"},
                                         model="gpt-4o", legacy=True)["choices"][0]
    assert plain["finish_reason"] == "stop" and "function_call" not in plain["message"]


def test_a_legacy_stream_holds_the_first_call_as_function_call_deltas():
    s = AnthropicToOpenAIStream(model="gpt-4o", completion_id="chatcmpl-1", include_usage=False, created=7, legacy=True)
    chunks = [c for etype, data in ANTHROPIC_STREAM for c in s.feed(etype, data)] + s.finish()
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "plan"},
        {"content": "Hi"},
        {"function_call": {"name": "f", "arguments": ""}},
        {"function_call": {"arguments": '{"x":'}},
        {"function_call": {"arguments": " 1}"}},
        {},  # the second call is not the legacy reply's: none asks for two
    ]
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"
    assert not any("tool_calls" in d for d in deltas)


def test_a_legacy_call_with_no_arguments_gets_an_empty_object():
    events = [e for e in ANTHROPIC_STREAM if not (e[0] == "content_block_delta" and e[1]["index"] == 2)]
    s = AnthropicToOpenAIStream(model="m", completion_id="c", include_usage=False, created=1, legacy=True)
    chunks = [c for etype, data in events for c in s.feed(etype, data)] + s.finish()
    args = "".join(c["choices"][0]["delta"].get("function_call", {}).get("arguments", "") for c in chunks)
    assert json.loads(args) == {}
