"""Faults found in tool-call repair (wire/repair.py, wire/arguments.py and their use in
wire/local_stream.py and wire/openai/backend_reply.py). Each test fails on the code as
it stands; its docstring says what Claude Code would see."""

from __future__ import annotations

import time
from typing import Any

import pytest

from nonstop.wire import openai as oa
from nonstop.wire.local_stream import LocalStreamNormalizer, normalize_message
from nonstop.wire.repair import MAX_CALLS, Toolbox, split_text
from tests.fixtures.local_outputs.record import TOOLS, content_of
from tests.support.anthropic_stream import validate_anthropic_stream

Event = tuple[str, dict[str, Any]]
BOX = Toolbox.of(TOOLS)
assert BOX is not None

READ = '{"name": "Read", "arguments": {"file_path": "a.py"}}'
BASH_RM = '{"name": "Bash", "arguments": {"command": "rm -rf build"}}'


def _text_stream(text: str, stop_reason: str, chunk: int) -> list[Event]:
    """A native /v1/messages server's stream of one text block, cut into `chunk`-sized deltas."""
    events: list[Event] = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "usage": {"input_tokens": 20, "output_tokens": 0}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
    ]
    for i in range(0, len(text), chunk):
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": text[i : i + chunk]}}))
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def _streamed(text: str, stop_reason: str, chunk: int, tools: list[dict[str, Any]] = TOOLS) -> tuple[list[dict[str, Any]], str]:
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=10, tools=tools, tag="abc123")
    out = [e for name, data in _text_stream(text, stop_reason, chunk) for e in norm.feed(name, data)] + norm.finish()
    validate_anthropic_stream(out)
    return content_of(out), norm.stop_reason


def _whole(text: str, stop_reason: str, tools: list[dict[str, Any]] = TOOLS) -> tuple[list[dict[str, Any]], str]:
    msg = normalize_message({"content": [{"type": "text", "text": text}], "stop_reason": stop_reason},
                            model="m", input_tokens_estimate=10, tools=tools, tag="abc123")
    return msg["content"], msg["stop_reason"]


def _tool_uses(content: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(b["name"], b["input"]) for b in content if b.get("type") == "tool_use"]


# --- 1. a line of code inside an unclosed foreign code fence becomes a call ----------------------

PYTHON_FENCE = "Here is the test data module:\n```python\nCALLS = []\n" + BASH_RM


@pytest.mark.parametrize("stop_reason", ["max_tokens", "end_turn"])
@pytest.mark.parametrize("path", ["stream", "whole"])
def test_a_dict_literal_ending_an_unclosed_python_fence_is_not_a_call(path: str, stop_reason: str) -> None:
    """The model is writing Python for the user in a ```python fence; the output limit
    (or the model itself) ends it right after a line that is a dict literal shaped like a
    call. A ```python fence is code, not a call (a *closed* one is correctly left as
    text: "text after the call"), but with its closing fence missing the last line is
    read as a bare JSON call. Claude Code would receive a Bash tool_use running
    `rm -rf build` with stop_reason tool_use, instead of the code as text."""
    content, stop = _streamed(PYTHON_FENCE, stop_reason, 7) if path == "stream" else _whole(PYTHON_FENCE, stop_reason)
    assert _tool_uses(content) == [], content
    assert stop != "tool_use"


# --- 2. the string guard only knows call objects whose first key is the call's key ----------------

QUOTING_WRITE = (
    '{"type": "function", "name": "Write", "parameters": {"file_path": "notes.md", "content": "# Cleanup\n'
    "To clean, the agent calls:\n" + BASH_RM + "\n"
)


@pytest.mark.parametrize("stop_reason", ["max_tokens", "end_turn"])
@pytest.mark.parametrize("path", ["stream", "whole"])
def test_the_lines_of_a_string_left_open_stay_text_whatever_the_key_order(path: str, stop_reason: str) -> None:
    """A Write in the Llama shape `{"type": "function", "name": ..., "parameters": ...}`
    (one of the shapes repair.py reads) whose content quotes a call on a line of its own,
    cut inside that content. repair._Strings only recognises an object whose FIRST key is
    name/tool/function (its _OPENER regex), so here it does not know the quoted line is
    the inside of an open string; the same text with "name" first is correctly left as
    text. Claude Code would run `Bash rm -rf build`, a line from a file the model was
    writing, instead of seeing the cut Write as text."""
    if path == "stream":
        content, stop = _streamed(QUOTING_WRITE, stop_reason, 7)
    else:
        content, stop = _whole(QUOTING_WRITE, stop_reason)
    assert _tool_uses(content) == [], content
    assert content == [{"type": "text", "text": QUOTING_WRITE}] and stop != "tool_use"


# --- 3. MAX_CALLS does not bound a tool_calls list ------------------------------------------------


def test_a_tool_calls_list_makes_at_most_max_calls() -> None:
    """repair.py promises at most MAX_CALLS calls from one text block ("More calls in a
    row ... is data rather than calls"); a run of 9 lines makes 8. The bound is counted
    in scanned objects, so one `{"tool_calls": [...]}` object with 30 entries makes 30
    calls (limited only by HOLD_LIMIT characters). Claude Code would run dozens of
    tool calls from what repair.py itself calls data."""
    text = '{"tool_calls": [' + ", ".join([READ] * 30) + "]}"
    assert len(split_text(text, BOX).calls) <= MAX_CALLS


# --- 4. hostile output: each line start is rescanned for up to HOLD_LIMIT characters -------------


def test_lines_that_each_reopen_a_string_are_read_in_linear_time() -> None:
    """Lines of the form `{"\\"` each begin a call-shaped scan, and every later line
    closes the open string and opens another, so no scan dies before HOLD_LIMIT (16,384)
    characters: every line start costs ~16k characters of Python-level scanning. 10,000
    characters of this take seconds (40,000 took over 20 s here), and split_text and
    CallWatch run on the event loop, so one degenerate local reply stalls every other
    request nonstop is serving, Claude Code's included. Plain prose of the same size
    takes milliseconds."""
    text = "x\n" + '{"\\"\n' * 2000
    started = time.perf_counter()
    split_text(text, BOX)
    assert time.perf_counter() - started < 1.0


# --- 5. native arguments with a fixable slip are reported as cut by the output limit -------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


@pytest.mark.parametrize(("arguments", "meant"), [
    ('{"command": "ls",}', {"command": "ls"}),
    ('{"command": "sleep 1", "run_in_background": True}', {"command": "sleep 1", "run_in_background": True}),
], ids=["trailing-comma", "python-literal"])
def test_a_whole_native_call_with_a_json_slip_is_not_reported_as_cut(arguments: str, meant: dict[str, Any]) -> None:
    """An OpenAI-API local server streams a call whose arguments have a trailing comma or
    a Python `True` (slips repair.loads_almost_json fixes when the same call is written as
    text), and finishes with finish_reason "tool_calls": nothing was cut. ArgumentsStream
    dies at the slip, the normalizer closes what it had sent and sets _cut_call, so the
    client hears stop_reason max_tokens (Claude Code does not run the tool, and reports
    the output limit) and, for the literal, an input with run_in_background silently
    dropped. The whole (non-streamed) reply of the same server says tool_use."""
    tr = oa.OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10, close_cut_calls=False)
    chunks = [
        _chunk({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}),
        _chunk({}, "tool_calls"),
    ]
    events = [e for c in chunks for e in tr.feed(c)] + tr.finish()
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=10, tools=TOOLS, tag="abc123")
    out = [e for name, data in events for e in norm.feed(name, data)] + norm.finish()
    validate_anthropic_stream(out)
    assert norm.stop_reason == "tool_use"
    assert _tool_uses(content_of(out)) == [("Bash", meant)]


# --- 6. the OpenAI path repairs against the original names, the model saw the wire names ---------

LONG_MCP = "mcp__company_internal_documentation__search_pages_by_title_and_body_text"  # 72 characters
MCP_TOOLS = [{"name": LONG_MCP, "description": "Search the docs.", "input_schema": {
    "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], "additionalProperties": False}}]


@pytest.mark.parametrize("path", ["stream", "whole"])
def test_a_text_call_naming_the_tool_as_the_openai_model_saw_it_is_repaired(path: str) -> None:
    """On an `api = "openai"` backend, a tool name outside ^[a-zA-Z0-9_-]{1,64}$ (a long
    MCP name) is sent to the model under a mapped wire name (docs/compatibility.md), and
    the reply translators map native calls back. A call the model writes as text uses the
    only name it was shown, the wire name, but the normalizer's Toolbox holds only the
    original names (backends/local.py passes local_req["tools"], not the name map), so it
    is "not offered". Claude Code sees the <tool_call> as text and the turn stops, while
    the same call to a short-named tool would have run."""
    body = oa.anthropic_to_openai_request({"messages": [{"role": "user", "content": "search"}], "tools": MCP_TOOLS},
                                          model="m", max_tokens=100, stream=path == "stream")
    name_map = body.pop(oa.TOOL_NAME_MAP_KEY)
    wire = body["tools"][0]["function"]["name"]
    assert wire != LONG_MCP and name_map == {wire: LONG_MCP}
    text = f'<tool_call>\n{{"name": "{wire}", "arguments": {{"query": "install"}}}}\n</tool_call>'
    if path == "whole":
        doc = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
        msg = oa.openai_to_anthropic_response(doc, model="m", input_tokens_estimate=5, tool_name_map=name_map)
        msg = normalize_message(msg, model="m", input_tokens_estimate=5, tools=MCP_TOOLS, tag="abc123")
        content = msg["content"]
    else:
        tr = oa.OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10,
                                       tool_name_map=name_map, close_cut_calls=False)
        chunks = [_chunk({"role": "assistant", "content": text[i : i + 9]}) for i in range(0, len(text), 9)]
        events = [e for c in [*chunks, _chunk({}, "stop")] for e in tr.feed(c)] + tr.finish()
        norm = LocalStreamNormalizer(model="m", input_tokens_estimate=10, tools=MCP_TOOLS, tag="abc123")
        out = [e for name, data in events for e in norm.feed(name, data)] + norm.finish()
        validate_anthropic_stream(out)
        content = content_of(out)
    assert _tool_uses(content) == [(LONG_MCP, {"query": "install"})], content

