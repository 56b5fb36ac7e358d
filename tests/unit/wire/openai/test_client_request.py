"""The OpenAI front door, requests: Chat Completions request -> Anthropic request
(openai_request_to_anthropic)."""

from __future__ import annotations

import pytest

from nonstop.wire.openai import TranslationError, openai_request_to_anthropic
from nonstop.wire.openai.client_request import DEFAULT_MAX_TOKENS


def req(*messages: dict, **extra) -> dict:
    return {"model": "gpt-4o", "messages": list(messages), **extra}


def user(content) -> dict:
    return {"role": "user", "content": content}


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
    assert "top_p" not in out  # current Claude models refuse both: temperature wins
    assert openai_request_to_anthropic(req(user("x"), top_p=0.5))["top_p"] == 0.5
    assert out["stop_sequences"] == ["END"]
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "u-1"}
    assert not {"presence_penalty", "seed", "logit_bias", "response_format"} & set(out)
    assert openai_request_to_anthropic(req(user("x"), stop=["a", "b", "", "\n", " "]))["stop_sequences"] == ["a", "b"]
    assert "stop_sequences" not in openai_request_to_anthropic(req(user("x"), stop="\n"))


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
    (req({"role": "function", "name": "f", "content": "x"}), "messages[0]: a function message must follow"),
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


@pytest.mark.parametrize("stream", ["true", 1, "yes", [True]])
def test_a_stream_flag_that_is_not_a_boolean_is_refused(stream) -> None:
    # OpenAI refuses it; read as "not streamed", the client would get JSON it did not ask for.
    with pytest.raises(TranslationError, match="stream"):
        openai_request_to_anthropic({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
    for fine in (True, False, None):
        openai_request_to_anthropic({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": fine})


# --- the legacy `functions` / `function_call` (older clients still send them) -------------

FUNCTIONS = [{"name": "get_weather", "description": "Weather for a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def test_legacy_functions_become_tools_with_one_call_at_a_time():
    out = openai_request_to_anthropic(req(user("weather in Oslo?"), functions=FUNCTIONS))
    assert out["tools"] == [{"name": "get_weather", "description": "Weather for a city",
                             "input_schema": FUNCTIONS[0]["parameters"]}]
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto", "disable_parallel_tool_use": True}),
    ("none", {"type": "none"}),
    ({"name": "get_weather"}, {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True}),
])
def test_legacy_function_call_becomes_tool_choice(choice, expected):
    assert openai_request_to_anthropic(req(user("x"), functions=FUNCTIONS, function_call=choice))["tool_choice"] == expected


def test_a_legacy_call_and_its_result_in_the_history():
    out = openai_request_to_anthropic(req(
        user("weather in Oslo?"),
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"role": "function", "name": "get_weather", "content": "12 C, rain"},
        functions=FUNCTIONS))
    call, result = out["messages"][1]["content"][0], out["messages"][2]["content"][0]
    assert call == {"type": "tool_use", "id": call["id"], "name": "get_weather", "input": {"city": "Oslo"}}
    assert result == {"type": "tool_result", "tool_use_id": call["id"], "content": "12 C, rain"}
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]


def test_two_legacy_calls_each_get_their_own_id():
    turn = [{"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
            {"role": "function", "name": "get_weather", "content": "ok"}]
    out = openai_request_to_anthropic(req(user("a"), *turn, user("b"), *turn, functions=FUNCTIONS))
    ids = [b["id"] for m in out["messages"] for b in m["content"] if b["type"] == "tool_use"]
    results = [b["tool_use_id"] for m in out["messages"] for b in m["content"] if b["type"] == "tool_result"]
    assert len(set(ids)) == 2 and results == ids


@pytest.mark.parametrize(("extra", "messages", "field"), [
    ({"functions": "f"}, [user("x")], "functions: must be a list"),
    ({"functions": [{"parameters": {}}]}, [user("x")], r"functions\[0\]"),
    ({"functions": FUNCTIONS, "tools": [{"type": "function", "function": {"name": "t"}}]}, [user("x")], "not both"),
    ({"functions": FUNCTIONS, "function_call": "required"}, [user("x")], "function_call"),
    ({"functions": FUNCTIONS, "function_call": {"nom": "x"}}, [user("x")], "function_call"),
    ({}, [user("x"), {"role": "assistant", "function_call": {"arguments": "{}"}}], r"messages\[1\]\.function_call\.name"),
    ({}, [user("x"), {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}},
          {"role": "function", "name": "f", "content": "1"}, {"role": "function", "name": "f", "content": "2"}],
     r"messages\[3\]: a function message must follow"),
])
def test_bad_legacy_requests_name_the_field(extra, messages, field):
    with pytest.raises(TranslationError, match=field):
        openai_request_to_anthropic(req(*messages, **extra))


JPEG, PNG, GIF, WEBP = "/9j/4AAQSkZJRg", "iVBORw0KGgoAAAANSUhEUg", "R0lGODlhAQABAA", "UklGRiQAAABXRUJQ"


@pytest.mark.parametrize(("url", "media_type"), [
    (f"data:image/jpg;base64,{JPEG}", "image/jpeg"),  # OpenAI takes image/jpg; the Messages API does not
    (f"data:;base64,{JPEG}", "image/jpeg"),  # no type named: the bytes say it
    (f"data:image/png;base64,{JPEG}", "image/jpeg"),  # a wrong type named: the bytes win, as the API checks them
    (f"data:IMAGE/PNG;base64,{PNG}", "image/png"),
    (f"data:image/gif;base64,{GIF}", "image/gif"),
    (f"data:image/webp;base64,{WEBP}", "image/webp"),
    ("data:image/JPG;base64,AAAA", "image/jpeg"),  # bytes nothing recognises: the named type, spelled as the API wants
    ("data:;base64,AAAA", "image/png"),
    (f"data:image/png;base64,\n {JPEG[:4]}\r\n{JPEG[4:]}\n", "image/jpeg"),  # base64 in lines, as MIME writes it
])
def test_an_inline_image_is_named_by_its_bytes(url, media_type):
    out = openai_request_to_anthropic(req(user([{"type": "image_url", "image_url": {"url": url}}])))
    source = out["messages"][0]["content"][0]["source"]
    assert source["media_type"] == media_type
    assert source["data"] == "".join(url.partition("base64,")[2].split())  # no line breaks: the API's base64 has none
