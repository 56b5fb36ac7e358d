"""The OpenAI front door: Chat Completions requests in, Chat Completions replies out."""

from __future__ import annotations

import json

import pytest

from nonstop.wire.openai import (
    AnthropicToOpenAIStream,
    TranslationError,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
)
from nonstop.wire.openai.client_request import DEFAULT_MAX_TOKENS


def req(*messages: dict, **extra) -> dict:
    return {"model": "gpt-4o", "messages": list(messages), **extra}


def user(content) -> dict:
    return {"role": "user", "content": content}


# --- requests ----------------------------------------------------------------------------


def test_minimal_request():
    assert openai_request_to_anthropic(req(user("hi"))) == {
        "model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "max_tokens": DEFAULT_MAX_TOKENS,
    }


def test_system_and_developer_messages_become_system():
    out = openai_request_to_anthropic(req(
        {"role": "system", "content": "rule one"}, user("q"), {"role": "developer", "content": [{"type": "text", "text": "rule two"}]},
    ))
    assert out["system"] == [{"type": "text", "text": "rule one"}, {"type": "text", "text": "rule two"}]
    assert [m["role"] for m in out["messages"]] == ["user"]
    assert openai_request_to_anthropic(req({"role": "system", "content": "s"}, user("q")))["system"] == "s"


@pytest.mark.parametrize(("extra", "expected"), [
    ({"max_tokens": 50}, 50),
    ({"max_completion_tokens": 70, "max_tokens": 50}, 70),
    ({}, DEFAULT_MAX_TOKENS),
])
def test_max_tokens(extra, expected):
    assert openai_request_to_anthropic(req(user("x"), **extra))["max_tokens"] == expected


def test_sampling_stop_stream_and_user():
    out = openai_request_to_anthropic(req(user("x"), temperature=1.6, top_p=0.5, stop="END", stream=True, user="u-1",
                                          presence_penalty=1, seed=3, logit_bias={}, response_format={"type": "text"}))
    assert out["temperature"] == 1.0
    assert out["top_p"] == 0.5
    assert out["stop_sequences"] == ["END"]
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "u-1"}
    assert not {"presence_penalty", "seed", "logit_bias", "response_format"} & set(out)
    assert openai_request_to_anthropic(req(user("x"), stop=["a", "b", ""]))["stop_sequences"] == ["a", "b"]


def test_images_become_image_blocks():
    out = openai_request_to_anthropic(req(user([
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
    ])))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}},
    ]


def test_inline_pdf_becomes_a_document():
    out = openai_request_to_anthropic(req(user([{"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}}])))
    assert out["messages"][0]["content"] == [{"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}]


def test_tool_round_trip_history():
    out = openai_request_to_anthropic(req(
        user("read both"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read", "arguments": '{"path": "a"}'}},
            {"id": "call.2", "type": "function", "function": {"name": "read", "arguments": "{broken"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "A body"},
        {"role": "tool", "tool_call_id": "call.2", "content": [{"type": "text", "text": "Error: "}, {"type": "text", "text": "no such file"}]},
        user("thanks"),
        tools=[{"type": "function", "function": {"name": "read", "description": "Read", "parameters": {"type": "object"}, "strict": True}}],
        tool_choice="required", parallel_tool_calls=False,
    ))
    assistant, results = out["messages"][1], out["messages"][2]
    fixed_id = assistant["content"][1]["id"]
    assert assistant == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "read", "input": {"path": "a"}},
        {"type": "tool_use", "id": fixed_id, "name": "read", "input": {"_raw": "{broken"}},
    ]}
    assert fixed_id != "call.2" and fixed_id.startswith("call_2")
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "A body"},
        {"type": "tool_result", "tool_use_id": fixed_id, "content": "no such file", "is_error": True},
        {"type": "text", "text": "thanks"},
    ]}
    assert len(out["messages"]) == 3
    assert out["tools"] == [{"name": "read", "description": "Read", "input_schema": {"type": "object"}}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("none", False, {"type": "none"}),
    ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_tool_choice(choice, parallel, expected):
    extra: dict = {"tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        extra["tool_choice"] = choice
    if parallel is not None:
        extra["parallel_tool_calls"] = parallel
    out = openai_request_to_anthropic(req(user("x"), **extra))
    assert out.get("tool_choice") == expected
    assert out["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}}}]


def test_tool_choice_without_tools_is_dropped():
    assert "tool_choice" not in openai_request_to_anthropic(req(user("x"), tool_choice="required"))


def test_empty_assistant_turns_and_reasoning_are_dropped():
    out = openai_request_to_anthropic(req(user("a"), {"role": "assistant", "content": "", "reasoning_content": "r"}, user("b")))
    assert [m["role"] for m in out["messages"]] == ["user", "user"]


@pytest.mark.parametrize(("body", "field"), [
    ([], "request body"),
    ({"messages": [user("x")]}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": "hi"}, "messages"),
    (req("x"), "messages[0]"),
    (req({"role": "wizard", "content": "x"}), "messages[0].role"),
    (req({"role": "function", "name": "f", "content": "x"}), "messages[0].role"),
    (req(user(5)), "messages[0].content"),
    (req(user([{"type": "input_audio", "input_audio": {}}])), "messages[0].content[0]"),
    (req(user([{"type": "image_url", "image_url": {"url": "ftp://x"}}])), "image_url.url"),
    (req(user([{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}])), "image_url.url"),
    (req(user([{"type": "file", "file": {"file_id": "file-1"}}])), "file"),
    (req(user([{"type": "text", "text": 3}])), "text"),
    (req({"role": "tool", "content": "x"}), "tool_call_id"),
    (req({"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}), "function.name"),
    (req({"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}), "tool_calls[0].id"),
    (req({"role": "assistant", "tool_calls": "x"}), "tool_calls"),
    (req(user("x"), max_tokens=0), "max_tokens"),
    (req(user("x"), max_completion_tokens="9"), "max_completion_tokens"),
    (req(user("x"), tools={"f": 1}), "tools"),
    (req(user("x"), tools=[{"type": "function"}]), "tools[0]"),
    (req(user("x"), tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="sometimes"), "tool_choice"),
    (req(user("x"), n=2), "n"),
    (req({"role": "system", "content": "only system"}), "messages"),
])
def test_invalid_requests_name_the_field(body, field):
    with pytest.raises(TranslationError, match=field.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        openai_request_to_anthropic(body)


def test_translation_error_is_a_value_error():
    assert issubclass(TranslationError, ValueError)


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
        {},
        None,
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 7 + ["tool_calls"]
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
