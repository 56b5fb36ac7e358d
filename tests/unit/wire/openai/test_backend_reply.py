"""OpenAI Chat Completions replies -> Anthropic, for local servers that speak only OpenAI:
a whole reply (openai_to_anthropic_response) and a stream of chunks (OpenAIStreamTranslator).

Golden tests: tests/fixtures/openai_streams/<name>.jsonl (one chunk per line) must give
exactly <name>.expected.json. To re-record after a deliberate change, run with
NONSTOP_UPDATE_GOLDEN=1 and review the diff.

Property tests at the end: random chunk sequences (text, reasoning, interleaved tool-call
fragments, usage, finish reasons, junk) never produce an event sequence the stream checker
rejects, and well-behaved ones keep every text and tool input, also back out through the
front door's stream (client_reply).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.wire.openai import (
    LOCAL_THINKING_SIGNATURE,
    AnthropicToOpenAIStream,
    OpenAIStreamTranslator,
    cut_tool_call,
    openai_to_anthropic_response,
)
from nonstop.wire.sse import JSONEventDecoder
from tests.support.anthropic_stream import StreamError, validate_anthropic_stream
from tests.unit.wire.openai.strategies import SETTINGS, json_objects, split, tool_names

FIXTURES = Path(__file__).parents[3] / "fixtures" / "openai_streams"
GOLDEN = sorted(p.stem for p in FIXTURES.glob("*.jsonl"))
EXPECTED_GOLDEN = {
    "plain_text", "single_tool_call", "parallel_tool_calls", "interleaved_tool_args",
    "all_at_once_args", "reasoning_then_text", "usage_less", "usage_final_chunk",
}


# --- a whole reply ---------------------------------------------------------------------------


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


def test_a_whole_reply_cut_in_a_tool_call_is_max_tokens():
    msg = convert(reply({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": '{"a": "b'}}]}, "length"))
    assert msg["stop_reason"] == "max_tokens"


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


# --- a stream of chunks ----------------------------------------------------------------------


def translate(chunks: list, *, estimate: int = 100, names: dict | None = None, offered: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    t = OpenAIStreamTranslator(model="local-model", message_id="msg_test", input_tokens_estimate=estimate, tool_name_map=names,
                               offered=offered)
    events: list[tuple[str, dict]] = []
    for chunk in chunks:
        events.extend(t.feed(chunk))
    events.extend(t.finish())
    return events


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    c: dict = {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage is not None:
        c["usage"] = usage
    return c


def call(index, id=None, name=None, args=None) -> dict:
    fn = {k: v for k, v in (("name", name), ("arguments", args)) if v is not None}
    tc: dict = {"index": index, "function": fn}
    if id is not None:
        tc["id"] = id
    return {"tool_calls": [tc]}


def of_type(events, etype):
    return [d for t, d in events if t == etype]


def tool_inputs(events) -> list[dict]:
    blocks: dict[int, list[str]] = {}
    for t, d in events:
        if t == "content_block_start" and d["content_block"]["type"] == "tool_use":
            blocks[d["index"]] = []
        elif t == "content_block_delta" and d["delta"]["type"] == "input_json_delta":
            blocks[d["index"]].append(d["delta"]["partial_json"])
    return [json.loads("".join(v)) for _, v in sorted(blocks.items())]


def text_of(events, dtype="text_delta", field="text") -> str:
    return "".join(d["delta"][field] for t, d in events if t == "content_block_delta" and d["delta"]["type"] == dtype)


# --- golden streams ----------------------------------------------------------------------


def test_every_golden_stream_is_present():
    assert set(GOLDEN) >= EXPECTED_GOLDEN


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_stream(name):
    # Each chunk as the local relay's decoder reads it (wire/sse.py: a lone surrogate mended).
    decoder = JSONEventDecoder(strict=True)
    chunks = [doc for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines() if line.strip()
              for _, doc in decoder.feed(b"data: " + line.encode() + b"\n\n")]
    events = [[t, d] for t, d in translate(chunks)]
    expected_file = FIXTURES / f"{name}.expected.json"
    if os.environ.get("NONSTOP_UPDATE_GOLDEN"):
        expected_file.write_text(json.dumps(events, indent=1, ensure_ascii=False) + "\n")
    assert events == json.loads(expected_file.read_text())
    validate_anthropic_stream([(t, d) for t, d in events])


# --- message_start and usage -------------------------------------------------------------


def test_message_start_uses_prompt_tokens_when_the_first_chunk_has_them():
    events = translate([chunk({"content": "x"}, usage={"prompt_tokens": 77, "completion_tokens": 1})])
    assert events[0][1]["message"]["usage"]["input_tokens"] == 77


def test_message_start_uses_the_estimate_otherwise_and_never_zero():
    assert translate([chunk({"content": "x"})])[0][1]["message"]["usage"]["input_tokens"] == 100
    assert translate([chunk({"content": "x"})], estimate=0)[0][1]["message"]["usage"]["input_tokens"] == 1


def test_message_start_is_first_even_for_a_junk_first_chunk():
    events = translate([{"object": "chat.completion.chunk"}, chunk({"content": "hi"})])
    assert events[0][0] == "message_start"
    validate_anthropic_stream(events)


def test_late_usage_is_in_message_delta_minus_cached_tokens():
    events = translate([
        chunk({"content": "hi"}), chunk(finish="stop"),
        {"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 600}}},
    ])
    usage = of_type(events, "message_delta")[0]["usage"]
    assert usage == {"input_tokens": 400, "output_tokens": 9, "cache_read_input_tokens": 600}


def test_fully_cached_prompt_still_reports_one_input_token():
    events = translate([chunk({"content": "hi"}, "stop", usage={"prompt_tokens": 50, "completion_tokens": 1,
                                                                 "prompt_tokens_details": {"cached_tokens": 50}})])
    assert of_type(events, "message_delta")[0]["usage"]["input_tokens"] == 1


def test_output_tokens_are_estimated_at_four_chars_each_when_no_usage_arrives():
    events = translate([chunk({"content": "a" * 40}), chunk(finish="stop")])
    assert of_type(events, "message_delta")[0]["usage"] == {"input_tokens": 100, "output_tokens": 10}
    assert of_type(translate([]), "message_delta")[0]["usage"]["output_tokens"] == 1


def test_usage_and_stop_reason_properties():
    t = OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=5)
    t.feed(chunk({"content": "abcd"}, "length"))
    assert t.stop_reason == "max_tokens"
    assert t.usage == {"input_tokens": 5, "output_tokens": 1}
    t.feed({"choices": [], "usage": {"prompt_tokens": 8, "completion_tokens": 3}})
    assert t.usage == {"input_tokens": 8, "output_tokens": 3}


# --- stop reasons ------------------------------------------------------------------------


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal"), ("eos", "end_turn"), (None, "end_turn"),
    # calls named but none made (vLLM does so): no call to run, so the end of the turn
    ("tool_calls", "end_turn"), ("function_call", "end_turn"),
])
def test_finish_reason_maps_to_stop_reason(finish, stop):
    events = translate([chunk({"content": "x"}, finish)])
    assert of_type(events, "message_delta")[0]["delta"]["stop_reason"] == stop


@pytest.mark.parametrize("finish", ["stop", "tool_calls", "eos", None])
def test_any_tool_block_means_tool_use(finish):
    events = translate([chunk(call(0, "call_1", "f", "{}")), chunk(finish=finish)])
    assert of_type(events, "message_delta")[0]["delta"]["stop_reason"] == "tool_use"
    validate_anthropic_stream(events)


def test_a_tool_call_cut_by_the_token_limit_is_max_tokens_not_a_call_to_run():
    # As the Anthropic API says it: the call's input may be cut (here mid-string).
    events = translate([chunk(call(0, "call_1", "Write", '{"path": "a.txt", "content": "line one\\nli')), chunk(finish="length")])
    assert of_type(events, "message_delta")[0]["delta"]["stop_reason"] == "max_tokens"
    validate_anthropic_stream(events)


def test_finish_without_any_chunk_is_a_valid_empty_message():
    events = translate([])
    assert [t for t, _ in events] == ["message_start", "message_delta", "message_stop"]
    validate_anthropic_stream(events)


def test_finish_and_feed_after_finish_are_no_ops():
    t = OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=5)
    t.feed(chunk({"content": "x"}))
    assert t.finish()
    assert t.finish() == []
    assert t.feed(chunk({"content": "late"})) == []


# --- tool calls --------------------------------------------------------------------------


def test_tool_start_carries_empty_input_and_arguments_come_as_deltas():
    events = translate([chunk(call(0, "call_1", "f", '{"a": 1}')), chunk(finish="tool_calls")])
    start = of_type(events, "content_block_start")[0]["content_block"]
    assert start == {"type": "tool_use", "id": "call_1", "name": "f", "input": {}}
    assert tool_inputs(events) == [{"a": 1}]


def test_tool_call_without_id_gets_a_generated_toolu_id():
    events = translate([chunk(call(0, None, "f", "{}"))])
    assert re.fullmatch(r"toolu_[0-9a-f]+", of_type(events, "content_block_start")[0]["content_block"]["id"])


def test_tool_ids_are_sanitized_and_unique_within_a_message():
    events = translate([chunk(call(0, "call:1/x", "f", "{}")), chunk(call(1, "call:1/x", "g", "{}"))])
    ids = [d["content_block"]["id"] for d in of_type(events, "content_block_start")]
    assert ids[0].startswith("call_1_x_")
    assert len(set(ids)) == 2
    validate_anthropic_stream(events)


def test_tool_names_are_restored_through_the_map():
    events = translate([chunk(call(0, "c1", "mcp__x__do_it_1a2b3c4d", "{}"))], names={"mcp__x__do_it_1a2b3c4d": "mcp__x__do.it"})
    assert of_type(events, "content_block_start")[0]["content_block"]["name"] == "mcp__x__do.it"


def test_empty_arguments_become_an_empty_object():
    events = translate([chunk(call(0, "c1", "f")), chunk(finish="tool_calls")])
    assert tool_inputs(events) == [{}]


def test_truncated_arguments_are_closed_as_valid_json():
    events = translate([chunk(call(0, "c1", "Write", '{"path": "a.txt", "content": "line one\\nline tw')), chunk(finish="length")])
    assert tool_inputs(events) == [{"path": "a.txt", "content": "line one\nline tw"}]
    validate_anthropic_stream(events)


def test_a_dangling_key_is_never_sent():
    events = translate([chunk(call(0, "c1", "f", '{"a": 1, "b')), chunk(finish="length")])
    assert tool_inputs(events) == [{"a": 1}]


def test_non_json_arguments_are_kept_under_raw():
    events = translate([chunk(call(0, "c1", "f", "not json")), chunk(finish="tool_calls")])
    assert tool_inputs(events) == [{"_raw": "not json"}]


def test_double_encoded_arguments_are_decoded():
    events = translate([chunk(call(0, "c1", "f", json.dumps(json.dumps({"a": 1}))))])
    assert tool_inputs(events) == [{"a": 1}]


def test_arguments_sent_as_an_object_are_accepted():
    events = translate([chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": {"a": [1]}}}]})])
    assert tool_inputs(events) == [{"a": [1]}]


def test_junk_after_a_complete_object_is_dropped():
    events = translate([chunk(call(0, "c1", "f", '{"a": 1}')), chunk(call(0, args='{"a": 1}'))])
    assert tool_inputs(events) == [{"a": 1}]


def test_a_stopped_block_gets_no_more_deltas():
    events = translate([chunk(call(0, "c1", "f", '{"a": 1')), chunk(finish="tool_calls"), chunk(call(0, args="}"))])
    assert tool_inputs(events) == [{"a": 1}]
    validate_anthropic_stream(events)


def test_a_call_without_a_name_is_dropped():
    events = translate([chunk(call(0, "c1", None, '{"a": 1}')), chunk({"content": "ok"}), chunk(finish="stop")])
    assert [d["content_block"]["type"] for d in of_type(events, "content_block_start")] == ["text"]
    validate_anthropic_stream(events)


def test_name_arriving_after_the_id_starts_the_block_with_buffered_arguments():
    events = translate([chunk(call(0, "c1", None, '{"a"')), chunk(call(0, None, "f", ": 2}"))])
    assert of_type(events, "content_block_start")[0]["content_block"]["name"] == "f"
    assert tool_inputs(events) == [{"a": 2}]


def test_reused_index_with_a_new_id_is_a_new_call():
    events = translate([chunk(call(0, "c1", "f", '{"n": 1}')), chunk(call(0, "c2", "g", '{"n": 2}'))])
    assert [d["content_block"]["id"] for d in of_type(events, "content_block_start")] == ["c1", "c2"]
    assert tool_inputs(events) == [{"n": 1}, {"n": 2}]


def test_a_finished_call_repeated_under_its_id_is_made_once():
    """LocalAI, and proxies that end a stream with a summary chunk, send the whole call
    again under the same id: one call, not two."""
    events = translate([chunk(call(0, "c1", "f", '{"n": ')), chunk(call(0, None, None, "1}")),
                        chunk(call(0, "c1", "f", '{"n": 1}')), chunk(finish="tool_calls")])
    assert [d["content_block"]["id"] for d in of_type(events, "content_block_start")] == ["c1"]
    assert tool_inputs(events) == [{"n": 1}]
    validate_anthropic_stream(events)


def test_the_same_id_on_every_fragment_is_one_call():
    events = translate([chunk(call(0, "c1", "f", '{"n"')), chunk(call(0, "c1", None, ": 1")),
                        chunk(call(0, "c1", None, "}")), chunk(finish="tool_calls")])
    assert tool_inputs(events) == [{"n": 1}]


def test_a_name_on_every_fragment_does_not_reread_the_arguments(monkeypatch):
    """A server that repeats the name on each fragment: whether the call is whole is told
    by the scanner that has read the arguments, not by parsing all of them again per
    fragment (quadratic: a long file written through a tool took seconds)."""
    import orjson as real

    from nonstop.wire.openai import backend_reply

    parses = []

    class Counting:
        JSONDecodeError = real.JSONDecodeError
        dumps = staticmethod(real.dumps)

        @staticmethod
        def loads(text):
            parses.append(len(text))
            return real.loads(text)

    monkeypatch.setattr(backend_reply, "orjson", Counting)
    body = "x" * 50
    pieces = ['{"content": "'] + [body] * 2000 + ['"}']
    events = translate([chunk(call(0, "c1", "Write", p)) for p in pieces] + [chunk(finish="tool_calls")])
    assert tool_inputs(events) == [{"content": body * 2000}]
    assert len(parses) < 10


def test_calls_without_index_use_their_position():
    events = translate([chunk({"tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "function": {"name": "g", "arguments": '{"x": 1}'}},
    ]})])
    assert tool_inputs(events) == [{}, {"x": 1}]
    validate_anthropic_stream(events)


def test_legacy_function_call_delta():
    events = translate([chunk({"function_call": {"name": "f", "arguments": '{"q"'}}),
                        chunk({"function_call": {"arguments": ': "x"}'}}), chunk(finish="function_call")])
    assert of_type(events, "content_block_start")[0]["content_block"]["name"] == "f"
    assert tool_inputs(events) == [{"q": "x"}]


def test_text_after_an_unfinished_tool_call_waits_for_it():
    events = translate([
        chunk(call(0, "c1", "f", '{"a": ')), chunk({"content": "note"}), chunk(call(0, args="1}")), chunk(finish="tool_calls"),
    ])
    validate_anthropic_stream(events)
    types = [d["content_block"]["type"] for d in of_type(events, "content_block_start")]
    assert types == ["tool_use", "text"]
    assert tool_inputs(events) == [{"a": 1}]
    assert text_of(events) == "note"


def test_tool_arguments_stream_while_the_call_is_live():
    t = OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=5)
    t.feed(chunk(call(0, "c1", "Write", "")))
    out = t.feed(chunk(call(0, args='{"content": "hello')))
    assert [d["delta"] for _, d in out] == [{"type": "input_json_delta", "partial_json": '{"content": "hello'}]


# --- reasoning ---------------------------------------------------------------------------


def test_reasoning_field_is_thinking_with_the_local_signature():
    events = translate([chunk({"reasoning": "hmm"}), chunk({"content": "ok"})])
    assert of_type(events, "content_block_start")[0]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert text_of(events, "thinking_delta", "thinking") == "hmm"
    sigs = [d["delta"]["signature"] for t, d in events if t == "content_block_delta" and d["delta"]["type"] == "signature_delta"]
    assert sigs == [LOCAL_THINKING_SIGNATURE]
    validate_anthropic_stream(events)


def test_reasoning_sent_under_both_names_is_taken_once():
    events = translate([chunk({"reasoning_content": "abc", "reasoning": "abc"})])
    assert text_of(events, "thinking_delta", "thinking") == "abc"


def test_thinking_between_texts_makes_three_blocks():
    events = translate([chunk({"content": "a"}), chunk({"reasoning_content": "r"}), chunk({"content": "b"})])
    assert [d["content_block"]["type"] for d in of_type(events, "content_block_start")] == ["text", "thinking", "text"]
    validate_anthropic_stream(events)


# --- robustness --------------------------------------------------------------------------


@pytest.mark.parametrize("junk", [
    {}, {"choices": None}, {"choices": [None]}, {"choices": [{"delta": None}]}, {"choices": [{}]},
    {"choices": "x"}, {"choices": [{"delta": {"content": None, "tool_calls": None}}]},
    {"choices": [{"delta": {"tool_calls": [None, 3, {"index": 0}]}}]}, {"usage": None}, {"usage": {"prompt_tokens": "9"}},
    {"choices": [{"index": 1, "delta": {"content": "second choice"}}]}, {"choices": [{"delta": {"content": 5}}]},
    {"choices": [{"delta": {"tool_calls": [{"index": True, "function": None}]}}]},
])
def test_junk_chunks_do_not_crash_or_emit_blocks(junk):
    events = translate([junk])
    assert of_type(events, "content_block_start") == []
    validate_anthropic_stream(events)


def test_content_as_a_list_of_parts():
    events = translate([chunk({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]})])
    assert text_of(events) == "ab"


def test_validator_catches_broken_streams():
    good = translate([chunk({"content": "x"}, "stop")])
    validate_anthropic_stream(good)
    broken = [
        good[1:],  # no message_start
        [good[0], ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})] + good[-2:],
        [(t, d) for t, d in good if t != "content_block_stop"],
        good[:-1],
        [(t, d) if t != "content_block_start" else (t, {**d, "index": 1}) for t, d in good],
        [(t, d) if t != "content_block_start" else (t, {**d, "content_block": {"type": "text", "text": "x"}}) for t, d in good],
        [(t, d) if t != "message_delta" else (t, {**d, "delta": {"stop_reason": "done"}}) for t, d in good],
    ]
    for events in broken:
        with pytest.raises(StreamError):
            validate_anthropic_stream(events)
    zero = [("message_start", {**good[0][1], "message": {**good[0][1]["message"], "usage": {"input_tokens": 0}}})] + good[1:]
    with pytest.raises(StreamError):
        validate_anthropic_stream(zero)


# --- property: random chunk streams ----------------------------------------------------------

JUNK = [
    {}, {"choices": None}, {"choices": [None]}, {"choices": [{"delta": None}]}, {"choices": "x"},
    {"choices": [{"index": 2, "delta": {"content": "other choice"}}]}, {"usage": "x"},
    {"choices": [{"delta": {"tool_calls": [None, {"index": "z"}, {"function": 1}]}}]},
    {"choices": [{"delta": {"content": 7, "reasoning_content": 8}}]}, {"error": None}, 42,
]
FINISH = ["stop", "length", "tool_calls", "content_filter", "function_call", "weird", ""]


@st.composite
def chaotic_streams(draw) -> list:
    """Chunks from a misbehaving server: everything in any order."""
    calls = {}
    for idx in range(draw(st.integers(0, 3))):
        args = json.dumps(draw(json_objects)) if draw(st.integers(0, 4)) else draw(st.text(max_size=20))
        calls[idx] = split(args, draw(st.lists(st.integers(0, 200), max_size=6)))
    ops = []
    for idx, frags in calls.items():
        ops.append(("start", idx))
        ops.extend(("args", idx, f) for f in frags)
    ops.extend(("text", t) for t in draw(st.lists(st.text(max_size=8), max_size=5)))
    ops.extend(("reasoning", t) for t in draw(st.lists(st.text(max_size=8), max_size=3)))
    ops.extend(("finish", draw(st.sampled_from(FINISH))) for _ in range(draw(st.integers(0, 2))))
    ops.extend(("usage",) for _ in range(draw(st.integers(0, 2))))
    ops.extend(("junk", j) for j in draw(st.lists(st.sampled_from(JUNK), max_size=3)))
    ops = draw(st.permutations(ops))
    chunks = []
    for op in ops:
        if op[0] == "start":
            call: dict[str, Any] = {"index": op[1], "function": {}}
            if draw(st.integers(0, 5)):
                call["id"] = draw(st.sampled_from(["call_1", "call 2", "c.3", "x"])) + str(op[1])
            if draw(st.integers(0, 5)):
                call["function"]["name"] = draw(tool_names)
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        elif op[0] == "args":
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": op[1], "function": {"arguments": op[2]}}]}}]})
        elif op[0] == "text":
            chunks.append({"choices": [{"index": 0, "delta": {"content": op[1]}}]})
        elif op[0] == "reasoning":
            key = draw(st.sampled_from(["reasoning_content", "reasoning"]))
            chunks.append({"choices": [{"index": 0, "delta": {key: op[1]}}]})
        elif op[0] == "finish":
            chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": op[1]}]})
        elif op[0] == "usage":
            chunks.append({"choices": [], "usage": {"prompt_tokens": draw(st.integers(0, 5000)), "completion_tokens": draw(st.integers(0, 500)),
                                                     "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, 6000))}}})
        else:
            chunks.append(op[1])
    return chunks


@SETTINGS
@given(chaotic_streams(), st.integers(-5, 10**6), st.booleans())
def test_any_chunk_sequence_gives_a_valid_anthropic_stream(chunks, estimate, offered):
    # offered: names that begin one another, so that names in pieces may wait to be whole
    validate_anthropic_stream(translate(chunks, estimate=estimate, offered=("rea", "read", "Bash", "Bash2") if offered else ()))


@st.composite
def well_behaved_streams(draw) -> tuple[list, str, list[dict]]:
    """Text, then tool calls with id+name first and arguments split anywhere and
    interleaved across calls, then finish and usage."""
    chunks: list = []
    text = draw(st.text(max_size=40))
    chunks.extend({"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in split(text, draw(st.lists(st.integers(0, 50), max_size=4))))
    docs = draw(st.lists(json_objects, max_size=4))
    queues = {i: split(json.dumps(d, ensure_ascii=draw(st.booleans())), draw(st.lists(st.integers(0, 300), max_size=8))) for i, d in enumerate(docs)}
    for i in queues:  # every call is announced before any arguments arrive
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]})
    while any(queues.values()):
        i = draw(st.sampled_from([k for k, q in queues.items() if q]))
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": i, "function": {"arguments": queues[i].pop(0)}}]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if docs else "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    return chunks, text, docs


@SETTINGS
@given(well_behaved_streams())
def test_interleaved_streams_keep_text_and_every_tool_input(case):
    chunks, text, docs = case
    events = translate(chunks, estimate=10)
    validate_anthropic_stream(events)
    assert text_of(events) == text
    assert tool_inputs(events) == docs

    # ... and back out through the front door's stream: the same text and arguments.
    out = AnthropicToOpenAIStream(model="m", completion_id="c", include_usage=True, created=1)
    chunks_back = [c for t, d in events for c in out.feed(t, d)] + out.finish()
    deltas = [c["choices"][0]["delta"] for c in chunks_back if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == text
    args: dict[int, str] = {}
    for d in deltas:
        for call in d.get("tool_calls") or []:
            args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert [json.loads(a) for _, a in sorted(args.items())] == docs
    assert chunks_back[-1]["usage"]["completion_tokens"] == 5


OFFERED = ["Bash", "BashOutput", "Read", "TodoRead", "Write", "mcp__srv__do_it"]


@st.composite
def split_name_streams(draw) -> tuple[list, list[tuple[str, str, dict]]]:
    """Calls one after another, each name cut into pieces sent before its arguments, on
    an index of its own or on index 0 reused with a new id; the end named or not."""
    reuse = draw(st.booleans())
    calls = [(f"call_{i}", draw(st.sampled_from(OFFERED)), draw(json_objects)) for i in range(draw(st.integers(1, 3)))]
    chunks: list = []
    for i, (call_id, name, doc) in enumerate(calls):
        index = 0 if reuse else i
        pieces = [p for p in split(name, draw(st.lists(st.integers(0, 20), max_size=3))) if p]
        fragments = [{"id": call_id, "type": "function", "function": {"name": pieces[0], "arguments": ""}}]
        fragments += [{"function": {"name": p}} for p in pieces[1:]]
        fragments += [{"function": {"arguments": a}} for a in split(json.dumps(doc), draw(st.lists(st.integers(0, 300), max_size=4)))]
        chunks.extend({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": index, **f}]}}]} for f in fragments)
    if draw(st.booleans()):
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return chunks, calls


@SETTINGS
@given(split_name_streams())
def test_names_split_into_pieces_come_out_whole(case):
    chunks, calls = case
    t = OpenAIStreamTranslator(model="m", message_id="msg_1", input_tokens_estimate=10, offered=OFFERED)
    events = [e for c in chunks for e in t.feed(c)] + t.finish()
    validate_anthropic_stream(events)
    starts = [d["content_block"] for d in of_type(events, "content_block_start")]
    assert [(b["id"], b["name"]) for b in starts] == [(call_id, name) for call_id, name, _ in calls]
    assert tool_inputs(events) == [doc for _, _, doc in calls]
    assert t.stop_reason == "tool_use"


def _length(message: dict, finish: str = "length") -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}


def _fn(args: object, name: str = "Write") -> dict:
    return {"tool_calls": [{"id": "c", "function": {"name": name, "arguments": args}}]}


@pytest.mark.parametrize("reply,cut", [
    (_length(_fn('{"path": "a.txt", "content": "li')), True),
    (_length({"function_call": {"name": "Write", "arguments": '{"path": "a'}}), True),
    (_length(_fn('{"path": "a.txt"}')), False),  # whole: the limit came after it
    (_length(_fn('{"path": "a.txt"}<|eot|>')), False),  # whole, with junk after: read whole
    (_length(_fn('"{\\"a\\": 1')), True),  # double-encoded and cut: not whole, as streamed
    (_length(_fn("hello")), True),  # no object at all: its best reading goes out, as cut
    (_length(_fn({"path": "a.txt"})), False),
    (_length(_fn('{"path": "a', name="")), False),  # a call without a name is dropped
    # vLLM names tool_calls in place of length once it parsed a call: cut all the same.
    (_length(_fn('{"path": "a.txt", "content": "li'), finish="tool_calls"), True),
    (_length(_fn('{"path": "a.txt", "content": "li'), finish="stop"), True),
    (_length(_fn('{"path": "a.txt", "content": "li'), finish=None), True),  # no end named: unknown, so cut
    (_length({"content": "prose"}), False),
    ({"choices": []}, False), ({}, False), (None, False),
])
def test_cut_tool_call_tells_a_call_the_limit_cut(reply, cut):
    assert cut_tool_call(reply) is cut


def test_a_whole_reply_s_first_choice_is_index_0_wherever_it_is_listed():
    # As a stream's is read: the same server's answer is the same whether streamed or not.
    resp = {"choices": [{"index": 1, "message": {"role": "assistant", "content": "choice-1"}, "finish_reason": "stop"},
                        {"index": 0, "message": {"role": "assistant", "content": "choice-0"}, "finish_reason": "stop"}]}
    assert convert(resp)["content"][0]["text"] == "choice-0"
    resp["choices"] = resp["choices"][:1]  # no index 0 at all: the one there is
    assert convert(resp)["content"][0]["text"] == "choice-1"
