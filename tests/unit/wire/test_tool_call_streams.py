"""Streamed tool calls through translation, at the edges servers and clients reach:
a call with no arguments, arguments not written as an object, ids that change mid-call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nonstop.wire.local_stream import LocalStreamNormalizer
from nonstop.wire.openai import AnthropicToOpenAIStream, OpenAIStreamTranslator
from tests.support.anthropic_stream import validate_anthropic_stream

Event = tuple[str, dict[str, Any]]


def _e(t: str, **kw: Any) -> Event:
    return (t, {"type": t, **kw})


def _tool_inputs(events: list[Event]) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, data in events:
        if name == "content_block_start" and data["content_block"]["type"] == "tool_use":
            out[data["index"]] = ""
        elif name == "content_block_delta" and data["delta"].get("type") == "input_json_delta":
            out[data["index"]] += data["delta"]["partial_json"]
    return out


def _stop_reason(events: list[Event]) -> str | None:
    return next(d["delta"]["stop_reason"] for n, d in events if n == "message_delta")


# --- the OpenAI front door: a call with no input streams "{}" ---------------------------------


def test_front_door_stream_tool_without_input_has_json_arguments() -> None:
    """A tool_use with empty input (the cloud streams `partial_json: ""` for it; a local
    Anthropic server may stream no delta at all) must reach an OpenAI client with
    arguments that parse as a JSON object ("{}"), as the non-streamed reply does; ""
    is not JSON."""
    tr = AnthropicToOpenAIStream(model="m", completion_id="chatcmpl-1", include_usage=False, created=1)
    events = [
        _e("message_start", message={"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                     "usage": {"input_tokens": 5, "output_tokens": 1}}),
        _e("content_block_start", index=0,
           content_block={"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}),
        _e("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": ""}),
        _e("content_block_stop", index=0),
        _e("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 3}),
        _e("message_stop"),
    ]
    chunks = [c for t, d in events for c in tr.feed(t, d)]
    args = "".join(
        call.get("function", {}).get("arguments", "")
        for c in chunks for ch in c["choices"] for call in ch["delta"].get("tool_calls", [])
    )
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert isinstance(json.loads(args), dict), f"arguments {args!r} are not a JSON object"


# --- the normalizer: a whole call whose input is read at its end is not cut --------------------


def _native_tool_stream(partial_json: str) -> list[Event]:
    """A native /v1/messages server's stream of one complete call (stop_reason tool_use)."""
    return [
        _e("message_start", message={"id": "msg_l", "type": "message", "role": "assistant", "content": [],
                                     "usage": {"input_tokens": 5, "output_tokens": 0}}),
        _e("content_block_start", index=0, content_block={"type": "tool_use", "id": "call_1", "name": "Bash"}),
        _e("content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": partial_json}),
        _e("content_block_stop", index=0),
        _e("message_delta", delta={"stop_reason": "tool_use", "stop_sequence": None}, usage={"output_tokens": 4}),
        _e("message_stop"),
    ]


@pytest.mark.parametrize("partial_json", [
    "",                              # a no-argument call (vLLM-style converters send it)
    '"{\\"command\\":\\"ls\\"}"',    # double-encoded arguments, whole and complete
], ids=["empty", "double_encoded"])
def test_normalizer_complete_call_read_at_block_end_is_tool_use(partial_json: str) -> None:
    """Nothing was cut: the server said tool_use and the input is whole, though not
    streamed as an object. The client must hear tool_use (max_tokens would keep Claude
    Code from running the tool), as through the OpenAI path."""
    n = LocalStreamNormalizer(model="m", input_tokens_estimate=10)
    out = [e for t, d in _native_tool_stream(partial_json) for e in n.feed(t, d)] + n.finish()
    assert _stop_reason(out) == "tool_use"
    assert isinstance(json.loads(_tool_inputs(out)[0] or "{}"), dict)


# --- the translator: a changed id on a nameless fragment continues the call ---------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _through_translator(chunks: list[dict[str, Any]], offered: tuple[str, ...] = ()) -> list[Event]:
    """Chat Completions chunks as the client gets them: translated, then normalized
    (`offered`: the names of the tools the server was shown)."""
    tr = OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10, close_cut_calls=False,
                                offered=offered)
    evs = [e for c in chunks for e in tr.feed(c)] + tr.finish()
    n = LocalStreamNormalizer(model="m", input_tokens_estimate=10)
    out = [e for t, d in evs for e in n.feed(t, d)] + n.finish()
    validate_anthropic_stream(out)
    return out


def test_translator_id_change_mid_call_keeps_the_arguments() -> None:
    """Some OpenAI-compatible servers repeat an id on every delta but not the same one
    (mlx-openai-server before its PR #216; Poolside: one id with the name, another on
    every argument delta). The fragments carry the same index and no name: they continue
    call 0, whose arguments must not be lost."""
    chunks = [
        _chunk({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_A", "type": "function", "function": {"name": "Bash", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_B", "function": {"arguments": '{"command":'}}]}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_B", "function": {"arguments": ' "ls"}'}}]}),
        _chunk({}, "tool_calls"),
    ]
    out = _through_translator(chunks)
    assert [json.loads(v) for v in _tool_inputs(out).values()] == [{"command": "ls"}]
    assert _stop_reason(out) == "tool_use"


def test_translator_a_new_id_with_a_name_on_a_used_index_is_the_next_call() -> None:
    """A server that reuses index 0 for its next call sends the new id with a name."""
    chunks = [
        _chunk({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_A", "type": "function", "function": {"name": "Bash", "arguments": '{"command": "ls"}'}}]}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_B", "type": "function",
                                "function": {"name": "Read", "arguments": '{"file_path": "a"}'}}]}),
        _chunk({}, "tool_calls"),
    ]
    out = _through_translator(chunks)
    assert [json.loads(v) for v in _tool_inputs(out).values()] == [{"command": "ls"}, {"file_path": "a"}]
    assert _stop_reason(out) == "tool_use"


@pytest.mark.parametrize("partial_json", ['{"command": "l', '"{\\"command\\": \\"l'], ids=["object", "double_encoded"])
def test_normalizer_a_call_left_open_under_tool_use_is_still_cut(partial_json: str) -> None:
    """Arguments that end before they are whole, whatever stop reason the server gave."""
    n = LocalStreamNormalizer(model="m", input_tokens_estimate=10)
    out = [e for t, d in _native_tool_stream(partial_json) for e in n.feed(t, d)] + n.finish()
    assert _stop_reason(out) == "max_tokens"


def test_per_delta_ids_keep_double_encoded_arguments() -> None:
    """A new id on every delta, and the arguments double-encoded: the fragments are
    one call, read whole at its end."""
    chunks = [
        _chunk({"role": "assistant", "tool_calls": [
            {"index": 0, "id": "call_A", "type": "function", "function": {"name": "Bash", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_B", "function": {"arguments": '"{\\"command\\": '}}]}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_C", "function": {"arguments": '\\"ls\\"}"'}}]}),
        _chunk({}, "tool_calls"),
    ]
    assert [json.loads(v) for v in _tool_inputs(_through_translator(chunks)).values()] == [{"command": "ls"}]


def _reused_index(*fragments: dict[str, Any]) -> list[Any]:
    chunks = [_chunk({"role": "assistant", "content": None})]
    chunks += [_chunk({"tool_calls": [{"index": 0, **f}]}) for f in fragments]
    out = _through_translator([*chunks, _chunk({}, "tool_calls")])
    assert _stop_reason(out) == "tool_use"
    return [json.loads(v) for v in _tool_inputs(out).values()]


def _fn(name: str | None = None, arguments: str = "") -> dict[str, Any]:
    return {"function": {"arguments": arguments} | ({"name": name} if name else {})}


def test_translator_a_server_reusing_index_0_without_ids_keeps_every_call() -> None:
    # another tool's name: the next call, even right after a call with no arguments
    assert _reused_index(_fn("Bash", '{"command": "ls"}'), _fn("Read", '{"file_path": "a"}')) == [
        {"command": "ls"}, {"file_path": "a"}]
    assert _reused_index(_fn("TodoRead"), _fn("Read", '{"file_path": "a"}')) == [{}, {"file_path": "a"}]
    # the same tool twice: its name with new arguments once the first call's are whole
    assert _reused_index(_fn("Read", '{"file_path": "a"}'), _fn("Read", '{"file_path": "b"}')) == [
        {"file_path": "a"}, {"file_path": "b"}]
    # ... or its name alone, then the arguments in fragments of their own
    assert _reused_index(_fn("Read", '{"file_path": "a"}'), _fn("Read"), _fn(None, '{"file_'),
                         _fn(None, 'path": "b"}')) == [{"file_path": "a"}, {"file_path": "b"}]
    # the same id again (a server that numbers nothing new): the name and arguments say it
    assert _reused_index({"id": "x", **_fn("Read", '{"file_path": "a"}')},
                         {"id": "x", **_fn("Read", '{"file_path": "b"}')}) == [{"file_path": "a"}, {"file_path": "b"}]


def test_translator_a_name_repeated_on_every_fragment_is_one_call() -> None:
    assert _reused_index(_fn("Bash", '{"comm'), _fn("Bash", 'and": "ls"}'), _fn("Bash"), _fn("Bash", " ")) == [
        {"command": "ls"}]
    # a trailing repeat of the name with nothing after it adds no call
    assert _reused_index(_fn("Bash", '{"command": "ls"}'), _fn("Bash")) == [{"command": "ls"}]


# --- the translator: a name split across fragments ---------------------------------------------

# Claude Code's tools include names that begin others' (Bash, BashOutput): a name that is
# whole may still grow, and one that grows must not have started its block.
OFFERED = ("Bash", "BashOutput", "Read", "TodoRead", "Write")


def _calls(out: list[Event]) -> list[tuple[str, str, Any]]:
    """(id, name, input) of each tool_use block, in order; every block started and stopped once."""
    starts = [d for n, d in out if n == "content_block_start"]
    stops = [d["index"] for n, d in out if n == "content_block_stop"]
    assert stops == [d["index"] for d in starts] == list(range(len(starts)))
    inputs = _tool_inputs(out)
    return [(d["content_block"]["id"], d["content_block"]["name"], json.loads(inputs[d["index"]]))
            for d in starts if d["content_block"]["type"] == "tool_use"]


def _on_index_0(*fragments: dict[str, Any], finish: str | None = "tool_calls") -> list[dict[str, Any]]:
    chunks = [_chunk({"role": "assistant", "content": None})]
    chunks += [_chunk({"tool_calls": [{"index": 0, **f}]}) for f in fragments]
    return chunks + ([_chunk({}, finish)] if finish else [])


def test_a_split_name_on_a_reused_index_is_one_call_with_the_whole_name() -> None:
    """A server that reuses index 0 for every call (a new id says which) and splits a
    name across fragments before any arguments: two calls, each named in full, each
    block started once (with its whole name) and stopped once."""
    chunks = _on_index_0(
        {"id": "call_1", "type": "function", **_fn("Bash")}, _fn(None, '{"command": "ls"}'),
        {"id": "call_2", "type": "function", **_fn("Re")}, _fn("ad"), _fn(None, '{"file_path": "a"}'))
    out = _through_translator(chunks, OFFERED)
    assert _calls(out) == [("call_1", "Bash", {"command": "ls"}), ("call_2", "Read", {"file_path": "a"})]
    assert _stop_reason(out) == "tool_use"


@pytest.mark.parametrize("fragments", [
    # the id repeated on every piece of the name
    [{"id": "call_2", **_fn("Re")}, {"id": "call_2", **_fn("ad")}, {"id": "call_2", **_fn(None, '{"file_path": "a"}')}],
    # the id only after the name (here with the first arguments)
    [_fn("Re"), _fn("ad"), {"id": "call_2", **_fn(None, '{"file_path": "a"}')}],
    # the arguments begin before the name is whole
    [{"id": "call_2", **_fn("Re", '{"file_')}, _fn("ad", 'path": "a"}')],
    # an empty name, before and between the pieces
    [{"id": "call_2", **_fn(None)} | {"function": {"name": "", "arguments": ""}}, _fn("Re"),
     {"function": {"name": "", "arguments": ""}}, _fn("ad"), _fn(None, '{"file_path": "a"}')],
], ids=["id_on_every_piece", "id_after_the_name", "arguments_first", "empty_names"])
def test_a_split_second_name_however_the_server_spreads_it(fragments: list[dict[str, Any]]) -> None:
    chunks = _on_index_0({"id": "call_1", **_fn("Bash", '{"command": "ls"}')}, *fragments)
    calls = _calls(_through_translator(chunks, OFFERED))
    assert [(name, inp) for _, name, inp in calls] == [("Bash", {"command": "ls"}), ("Read", {"file_path": "a"})]
    assert calls[0][0] == "call_1" and calls[1][0] != "call_1"


def test_a_whole_name_that_begins_another_tools_waits_for_what_follows() -> None:
    """"Bash" is a tool, and the start of "BashOutput": the pieces make the longer name."""
    chunks = _on_index_0({"id": "call_1", **_fn("Bash")}, _fn("Output"), _fn(None, '{"bash_id": "1"}'))
    assert _calls(_through_translator(chunks, OFFERED)) == [("call_1", "BashOutput", {"bash_id": "1"})]
    # and a call to "Bash" itself starts as soon as its arguments do
    tr = OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10, offered=OFFERED)
    assert tr.feed(_chunk({"tool_calls": [{"index": 0, "id": "call_1", **_fn("Bash")}]}))[1:] == []
    out = tr.feed(_chunk({"tool_calls": [{"index": 0, **_fn(None, '{"command": "ls"}')}]}))
    assert [n for n, _ in out] == ["content_block_start", "content_block_delta"]


def test_another_tools_name_is_still_the_next_call_when_names_can_split() -> None:
    """Knowing the tools keeps a server that reuses index 0 without ids apart from one that
    splits names: "TodoRead" then "Read" is two calls, as "Todo" then "Read" is one."""
    assert [c[1:] for c in _calls(_through_translator(_on_index_0(_fn("TodoRead"), _fn("Read", '{"file_path": "a"}')),
                                                      OFFERED))] == [("TodoRead", {}), ("Read", {"file_path": "a"})]
    assert [c[1:] for c in _calls(_through_translator(_on_index_0(_fn("Todo"), _fn("Read", "{}")),
                                                      OFFERED))] == [("TodoRead", {})]


def test_a_split_name_each_call_on_its_own_index() -> None:
    chunks = [_chunk({"tool_calls": [{"index": 0, "id": "call_1", **_fn("Wr")}]}),
              _chunk({"tool_calls": [{"index": 0, **_fn("ite", '{"file_path": "a", "content": ""}')}]}),
              _chunk({"tool_calls": [{"index": 1, "id": "call_2", **_fn("R")}]}),
              _chunk({"tool_calls": [{"index": 1, **_fn("ead")}]}),
              _chunk({"tool_calls": [{"index": 1, **_fn(None, '{"file_path": "a"}')}]}),
              _chunk({}, "tool_calls")]
    assert _calls(_through_translator(chunks, OFFERED)) == [
        ("call_1", "Write", {"file_path": "a", "content": ""}), ("call_2", "Read", {"file_path": "a"})]


def test_done_after_the_last_arguments_without_a_finish_reason_is_tool_use() -> None:
    """`[DONE]` right after the last argument fragment, no finish_reason: the answer ends as
    it stands, and a whole call in it asks for the tool."""
    chunks = _on_index_0({"id": "call_1", **_fn("Bash", '{"command": "ls"}')},
                         {"id": "call_2", **_fn("Re")}, _fn("ad", '{"file_path": "a"}'), finish=None)
    out = _through_translator(chunks, OFFERED)
    assert [c[1:] for c in _calls(out)] == [("Bash", {"command": "ls"}), ("Read", {"file_path": "a"})]
    assert _stop_reason(out) == "tool_use"
