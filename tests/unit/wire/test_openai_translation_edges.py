"""Anthropic <-> OpenAI translation for local servers, and the repair of tool calls
written as text, at their edges: words of other scripts where JSON wants a value, calls
that are not whole under any finish reason, history inputs that are not objects, and the
forms the repair leaves as text on purpose."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nonstop.wire.anthropic import to_local_request
from nonstop.wire.local_stream import LocalStreamNormalizer, normalize_message
from nonstop.wire.openai import (
    OpenAIStreamTranslator,
    anthropic_to_openai_request,
    cut_tool_call,
    openai_to_anthropic_response,
)
from nonstop.wire.repair import CallWatch, Toolbox, loads_almost_json, split_text

BASH = {
    "name": "Bash",
    "input_schema": {
        "type": "object",
        "properties": {"command": {"type": "string"}, "description": {"type": "string"}},
        "required": ["command"],
    },
}
TOOLS = [BASH]


# --- helpers -----------------------------------------------------------------------------------


def _stream_path(args_fragments: list[str], finish: str) -> tuple[str | None, str]:
    """The api="openai" streamed path as local_openai.py wires it: translator (close_cut_calls
    False) -> normalizer. Returns (stop_reason, input JSON text of the tool block)."""
    t = OpenAIStreamTranslator(model="m", message_id="msg_x", input_tokens_estimate=5, close_cut_calls=False)
    n = LocalStreamNormalizer(model="m", input_tokens_estimate=5, tools=TOOLS)
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": ""}}]}}]},
    ]
    chunks += [{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": f}}]}}]}
               for f in args_fragments]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    events = []
    for ch in chunks:
        for e, d in t.feed(ch):
            events += n.feed(e, d)
    for e, d in t.finish():
        events += n.feed(e, d)
    events += n.finish()
    stop = [d["delta"]["stop_reason"] for e, d in events if e == "message_delta"]
    pj = "".join(d["delta"].get("partial_json", "") for e, d in events if e == "content_block_delta")
    return (stop[-1] if stop else None), pj


def _whole_path(arguments: str, finish: str) -> dict[str, Any]:
    """The api="openai" non-streamed path as local.py / local_openai.py wire it."""
    resp = {
        "id": "chatcmpl-1", "object": "chat.completion", "model": "q",
        "choices": [{"index": 0, "finish_reason": finish, "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": arguments}}],
        }}],
    }
    msg = openai_to_anthropic_response(resp, model="m", input_tokens_estimate=5)
    return normalize_message(msg, model="m", input_tokens_estimate=5, tools=TOOLS, cut=cut_tool_call(resp))


def _convert(req: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """The api="openai" request path: the sanitizer, then the translator."""
    local = to_local_request(req, model="m", max_tokens=4096)
    return anthropic_to_openai_request(local, model="m", max_tokens=4096, stream=False, **kw)


# --- a bare word in another script inside a call-shaped object --------------------------------

NON_ASCII_BARE = '{"name": "Bash", "arguments": {"command": é}}'


@pytest.mark.parametrize("text", [
    NON_ASCII_BARE,
    '{"name": "Bash", "arguments": {"command": 日本語}}',
    'Voilà :\n{"name": "Bash", "arguments": {"command": échec}}',
])
def test_a_bare_word_in_another_script_leaves_a_call_shaped_object_as_text(text: str) -> None:
    """A small model writes a call-shaped object with an unquoted word in another script as a
    value (`{"command": é}`): broken JSON, so it stays text, as an ASCII bare word does."""
    tb = Toolbox.of(TOOLS)
    assert tb is not None
    split = split_text(text, tb)
    assert split.calls == ()
    assert split.prose == text


def test_loads_almost_json_refuses_a_bare_word_in_another_script_as_broken_json() -> None:
    """A bare word is BrokenJSON, whatever script its first letter is in."""
    from nonstop.wire.repair import BrokenJSON

    with pytest.raises(BrokenJSON):
        loads_almost_json("{'a': é}")


def test_a_streamed_reply_with_a_bare_word_in_another_script_keeps_its_text() -> None:
    """Streamed, the held line is read at the end and stays text: the answer is not lost."""
    tb = Toolbox.of(TOOLS)
    assert tb is not None
    w = CallWatch(tb)
    sent = w.feed(NON_ASCII_BARE)
    end = w.end()
    assert sent + end.prose == NON_ASCII_BARE and end.calls == ()


def test_a_whole_reply_with_a_bare_word_in_another_script_keeps_its_text() -> None:
    """Whole, the same reply keeps its text; the request does not fail."""
    msg = {"content": [{"type": "text", "text": "Je lance :\n" + NON_ASCII_BARE}], "stop_reason": "end_turn",
           "usage": {"input_tokens": 3, "output_tokens": 3}}
    out = normalize_message(msg, model="m", input_tokens_estimate=5, tools=TOOLS)
    assert [b["type"] for b in out["content"]] == ["text"]


# --- a call that is not whole, whole or streamed ------------------------------------------------


@pytest.mark.parametrize("finish", ["tool_calls", "stop"])
@pytest.mark.parametrize("arguments", ['{"command": "rm -rf /tmp/build', '{"command": "ls",', "not json"])
def test_a_call_that_is_not_whole_is_max_tokens_whole_or_streamed_whatever_the_finish(arguments: str, finish: str) -> None:
    """A call whose arguments never closed, or are no object, is not one to run, whatever
    finish the server named (vLLM names `tool_calls` in place of `length` once it parsed a
    call): `max_tokens` streamed and whole alike, so Claude Code never runs
    `rm -rf /tmp/build` cut short."""
    streamed_stop, _ = _stream_path([arguments], finish)
    whole = _whole_path(arguments, finish)
    assert streamed_stop == "max_tokens"  # the streamed path (passes today)
    assert whole["stop_reason"] == streamed_stop


def test_a_whole_call_is_tool_use_whole_or_streamed() -> None:
    """A whole object with finish tool_calls is tool_use on both paths."""
    assert _stream_path(['{"command": "ls"}'], "tool_calls")[0] == "tool_use"
    assert _whole_path('{"command": "ls"}', "tool_calls")["stop_reason"] == "tool_use"


# --- history inputs that are not objects ---------------------------------------------------------


@pytest.mark.parametrize("inp", [None, '{"command": "ls"}', ["ls"], 5])
def test_a_history_call_s_arguments_are_always_an_object_s_json(inp: Any) -> None:
    """A history tool_use whose `input` is not an object (null, a JSON string, a list, a number)
    goes to the server as an object's JSON (`{}`, the decoded object, `{"_raw": ...}`): chat
    templates (llama.cpp --jinja) read the arguments back as an object."""
    req = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": inp}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]},
    ], "tools": TOOLS}
    out = _convert(req)
    args = out["messages"][1]["tool_calls"][0]["function"]["arguments"]
    assert isinstance(json.loads(args), dict)


# --- forms left as they are on purpose -----------------------------------------------------------


def test_tool_result_images_go_to_a_user_message_after_the_tool_messages() -> None:
    """Text before a tool_result in the same user turn moves after the tool messages; the
    result's image goes to that user message, its error prefix kept."""
    req = {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "first"},
            {"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
                {"type": "text", "text": "a"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAA"}}]},
        ]},
    ]}
    msgs = _convert(req)["messages"]
    assert msgs[2] == {"role": "tool", "tool_call_id": msgs[1]["tool_calls"][0]["id"], "content": "Error: a"}
    assert msgs[3]["role"] == "user" and msgs[3]["content"][1]["image_url"]["url"] == "data:image/png;base64,AAA"


def test_system_blocks_and_system_role_messages_become_one_leading_system_message() -> None:
    """A system list with cache_control and a system message inside the conversation become
    one leading system message, in order."""
    req = {"system": [{"type": "text", "text": "S1", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "S2"}],
           "messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "mid"},
                        {"role": "user", "content": "again"}]}
    msgs = _convert(req)["messages"]
    assert msgs[0] == {"role": "system", "content": "S1\n\nS2\n\nmid"}
    assert all(m["role"] != "system" for m in msgs[1:])


def test_an_escaped_single_quote_inside_a_double_quoted_string_stays_text() -> None:
    """`\\'` inside a double-quoted string (a Python-ism) is not among the repairs: the call
    stays text."""
    tb = Toolbox.of(TOOLS)
    assert tb is not None
    split = split_text('{"name": "Bash", "arguments": {"command": "echo it\\\'s"}}', tb)
    assert split.calls == ()


def test_a_bare_json_array_of_calls_stays_text() -> None:
    """Only a bare object, a fence or tags are read as calls: a bare list of calls stays text."""
    tb = Toolbox.of(TOOLS)
    assert tb is not None
    assert split_text('[{"name": "Bash", "arguments": {"command": "ls"}}]', tb).calls == ()
