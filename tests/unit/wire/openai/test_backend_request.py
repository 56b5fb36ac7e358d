"""Anthropic Messages request -> OpenAI Chat Completions request, for local servers that
speak only OpenAI (anthropic_to_openai_request).

The property test at the end sends random Anthropic conversations through this
translation and back through the front door (client_request), and checks that no content
or order is lost, compared in a normalised form that spells out each documented convention.
"""

from __future__ import annotations

import json
import re
import string
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.wire.hygiene import EMPTY_TURN_TEXT
from nonstop.wire.openai import (
    TOOL_ERROR_PREFIX,
    TOOL_NAME_MAP_KEY,
    anthropic_to_openai_request,
    openai_request_to_anthropic,
    openai_tool_name,
    tool_name_map_for,
)
from tests.unit.wire.openai.strategies import SETTINGS, json_objects, tool_names

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


# --- property: conversations survive the round trip through the front door ------------------

texts = st.text(min_size=1, max_size=30)
tool_ids = st.text(string.ascii_letters + string.digits, min_size=4, max_size=12).map(lambda s: "toolu_" + s)
base64_data = st.text(string.ascii_letters + string.digits + "+/", min_size=4, max_size=16)
images = st.one_of(
    # Its bytes are the type it names (the OpenAI door names an image by its bytes).
    st.builds(lambda m, d: {"type": "image", "source": {"type": "base64", "media_type": m[0], "data": m[1] + d}},
              st.sampled_from([("image/png", "iVBORw0KGgo"), ("image/jpeg", "/9j/"), ("image/gif", "R0lGOD"),
                               ("image/webp", "UklGR")]), base64_data),
    st.builds(lambda p: {"type": "image", "source": {"type": "url", "url": "https://example.com/" + p}},
              st.text(string.ascii_lowercase, min_size=1, max_size=8)),
)
text_blocks = texts.map(lambda t: {"type": "text", "text": t})
user_blocks = st.lists(st.one_of(text_blocks, images), min_size=1, max_size=4)


@st.composite
def tool_results(draw, tool_id: str) -> dict:
    content = draw(st.one_of(
        st.text(max_size=30),
        st.lists(st.one_of(text_blocks, images), max_size=3),
    ))
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id, "content": content}
    if draw(st.booleans()):
        block["is_error"] = draw(st.booleans())
    return block


@st.composite
def conversations(draw) -> dict:
    req: dict[str, Any] = {"model": "claude-x", "max_tokens": draw(st.integers(1, 8000))}
    names = draw(st.lists(tool_names, min_size=1, max_size=4, unique=True))
    req["tools"] = [
        {"name": n, "input_schema": {"type": "object", "properties": {}}, **({"description": d} if (d := draw(st.none() | texts)) else {})}
        for n in names
    ]
    system = draw(st.none() | texts | st.lists(text_blocks, min_size=1, max_size=3))
    if system is not None:
        req["system"] = system
    messages: list[dict] = [{"role": "user", "content": draw(texts | user_blocks)}]
    for _ in range(draw(st.integers(0, 4))):
        blocks = draw(st.lists(text_blocks, max_size=2))
        calls = [{"type": "tool_use", "id": draw(tool_ids), "name": draw(st.sampled_from(names)), "input": draw(json_objects)}
                 for _ in range(draw(st.integers(0 if blocks else 1, 3)))]
        ids = [c["id"] for c in calls]
        if len(set(ids)) != len(ids):
            continue
        messages.append({"role": "assistant", "content": blocks + calls})
        if calls:
            results = [draw(tool_results(i)) for i in ids]
            side = draw(st.lists(st.one_of(text_blocks, images), max_size=2))
            messages.append({"role": "user", "content": results + side})
        else:
            messages.append({"role": "user", "content": draw(texts | user_blocks)})
        if draw(st.integers(0, 5)) == 0:
            messages.append({"role": "system", "content": draw(texts)})
    req["messages"] = messages
    if draw(st.booleans()):
        choice = draw(st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": names[0]}]))
        if draw(st.booleans()):
            choice["disable_parallel_tool_use"] = draw(st.booleans())
        req["tool_choice"] = choice
    for key, strategy in (("temperature", st.floats(0, 1)), ("top_p", st.floats(0, 1)), ("top_k", st.integers(1, 100)),
                          ("stop_sequences", st.lists(texts, min_size=1, max_size=3))):
        if draw(st.booleans()):
            req[key] = draw(strategy)
    return req


def _image_key(block: dict) -> tuple:
    src = block["source"]
    return ("image", src["type"], src.get("media_type"), src.get("data") or src.get("url"))


def normalise(req: dict, names: dict[str, str] | None = None) -> dict:
    """The content of a request, with each documented convention spelled out:
    the system texts' words (joined by blank lines, blank ones gone); consecutive same-role turns merged; an assistant
    turn's texts joined by blank lines, its tool calls in order; a user turn's tool
    results (text joined by newlines, is_error also expressed by the "Error: " prefix)
    first, then its other text and images, including images returned by tools."""
    names = names or {}
    system = req.get("system")
    system_texts = [system] if isinstance(system, str) else [b["text"] for b in system or []]
    turns: list[dict] = []
    for msg in req["messages"]:
        if msg["role"] == "system":
            system_texts.append(msg["content"])
            continue
        content = msg["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if msg["role"] == "assistant" and not any(b["type"] == "tool_use" or b["type"] == "text" and b["text"].strip()
                                                  for b in blocks):
            continue  # nothing but blank text: no turn at all
        if not turns or turns[-1]["role"] != msg["role"]:
            turns.append({"role": msg["role"], "texts": [], "calls": [], "results": [], "side": []})
        turn = turns[-1]
        for b in blocks:
            if b["type"] == "text":
                if msg["role"] == "assistant":
                    turn["texts"].append(("text", b["text"]))
                elif b["text"].strip() and b["text"] != EMPTY_TURN_TEXT:  # blank text goes; an empty turn says so
                    turn["side"].append(("text", b["text"]))
            elif b["type"] == "image":
                turn["side"].append(_image_key(b))
            elif b["type"] == "tool_use":
                turn["calls"].append((b["id"], names.get(b["name"], b["name"]), b["input"]))
            elif b["type"] == "tool_result":
                content = b.get("content")
                parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
                text = "\n".join(p["text"] for p in parts if p["type"] == "text")
                turn["side"].extend(_image_key(p) for p in parts if p["type"] == "image")
                is_error = bool(b.get("is_error"))
                if not is_error and text.startswith(TOOL_ERROR_PREFIX):
                    is_error, text = True, text[len(TOOL_ERROR_PREFIX):]
                turn["results"].append((b["tool_use_id"], text, is_error))
    for turn in turns:
        joined = "\n\n".join(t for _, t in turn["texts"] if t)
        turn["texts"] = joined if joined.strip() else ""  # an assistant's blank text goes
    if turns and turns[-1]["role"] == "assistant":  # the turn a model goes on from ends in no space
        turns[-1]["texts"] = turns[-1]["texts"].rstrip()
        if not (turns[-1]["texts"] or turns[-1]["calls"]):
            turns.pop()
    tools = [(names.get(t["name"], t["name"]), t.get("description"), t["input_schema"]) for t in req.get("tools") or []]
    choice = dict(req.get("tool_choice") or {}) or None
    if choice:
        if "name" in choice:
            choice["name"] = names.get(choice["name"], choice["name"])
        if not choice.get("disable_parallel_tool_use") or choice["type"] == "none":
            choice.pop("disable_parallel_tool_use", None)
    return {
        # Its words: blank texts go (the API refuses them), and one joined to others is
        # only spacing; the texts are joined by blank lines.
        "system": " ".join("\n\n".join(system_texts).split()),
        "turns": turns,
        "tools": tools,
        "tool_choice": choice,
        **{k: req.get(k) for k in ("temperature", "top_k")},
        "top_p": None if req.get("temperature") is not None else req.get("top_p"),  # temperature wins
        "stop_sequences": [t for t in req.get("stop_sequences") or [] if t.strip()] or None,
    }


@SETTINGS
@given(conversations())
def test_conversations_survive_the_round_trip(req):
    wire = anthropic_to_openai_request(req, model="local", max_tokens=100_000, stream=False)
    names = wire.pop(TOOL_NAME_MAP_KEY, {})
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", t["function"]["name"]) for t in wire["tools"])
    back = openai_request_to_anthropic(json.loads(json.dumps(wire)))
    assert back["max_tokens"] == req["max_tokens"]
    assert normalise(back, names) == normalise(req)
