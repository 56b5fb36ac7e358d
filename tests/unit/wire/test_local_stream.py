"""LocalStreamNormalizer: local server events in, strict-client-safe events out."""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest

from nonstop.wire.anthropic import Event
from nonstop.wire.local_stream import (
    LOCAL_THINKING_SIGNATURE,
    LocalStreamNormalizer,
    message_start,
    normalize_message,
)

TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def ev(data: dict[str, Any]) -> Event:
    return data["type"], data


def start(input_tokens: int = 0, msg_id: str = "msg_local_1") -> Event:
    return ev({
        "type": "message_start",
        "message": {
            "id": msg_id, "type": "message", "role": "assistant", "model": "qwen", "content": [],
            "usage": {"input_tokens": input_tokens, "output_tokens": 0},
        },
    })


def block_start(idx: int, block: dict[str, Any]) -> Event:
    return ev({"type": "content_block_start", "index": idx, "content_block": block})


def delta(idx: int, d: dict[str, Any]) -> Event:
    return ev({"type": "content_block_delta", "index": idx, "delta": d})


def stop(idx: int) -> Event:
    return ev({"type": "content_block_stop", "index": idx})


def msg_delta(stop_reason: str | None = "end_turn", output_tokens: int | None = 7, **usage: int) -> Event:
    u: dict[str, int] = dict(usage)
    if output_tokens is not None:
        u["output_tokens"] = output_tokens
    return ev({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": u})


MSG_STOP = ev({"type": "message_stop"})


def run(events: list[Event], *, estimate: int = 1234, end: bool = True) -> tuple[list[Event], LocalStreamNormalizer]:
    n = LocalStreamNormalizer(model="claude-sonnet-4-5", input_tokens_estimate=estimate)
    out: list[Event] = []
    for name, data in events:
        out.extend(n.feed(name, data))
    if end:
        out.extend(n.finish())
    return out, n


def check_well_formed(out: list[Event]) -> None:
    """The grammar of docs/wire.md §3, as Claude Code enforces it."""
    names = [e for e, _ in out if e != "ping"]
    assert names[0] == "message_start"
    assert names[-1] in ("message_stop", "error")
    assert all(e == d["type"] for e, d in out)
    open_blocks: set[int] = set()
    closed: set[int] = set()
    for name, data in out:
        if name == "content_block_start":
            assert data["index"] not in open_blocks | closed
            open_blocks.add(data["index"])
            block = data["content_block"]
            if block["type"] == "text":
                assert block["text"] == ""
            if block["type"] == "tool_use":
                assert block["input"] == {}
                assert TOOL_ID.match(block["id"])
        elif name == "content_block_delta":
            assert data["index"] in open_blocks
        elif name == "content_block_stop":
            open_blocks.remove(data["index"])
            closed.add(data["index"])
        elif name == "message_delta":
            assert not open_blocks
            assert data["usage"]["input_tokens"] > 0
    if names[-1] == "message_stop":
        assert "message_delta" in names
    ms = out[0][1]["message"]
    assert ms["usage"]["input_tokens"] > 0
    assert ms["content"] == []


def names(out: list[Event]) -> list[str]:
    return [e for e, _ in out]


# --- a clean stream passes through ---------------------------------------------------------


def test_clean_text_stream() -> None:
    out, n = run([
        start(input_tokens=50),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, {"type": "text_delta", "text": "Hello"}),
        ev({"type": "ping"}),
        delta(0, {"type": "text_delta", "text": " world"}),
        stop(0),
        msg_delta("end_turn", 3),
        MSG_STOP,
    ])
    check_well_formed(out)
    assert names(out) == [
        "message_start", "content_block_start", "content_block_delta", "ping",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop",
    ]
    assert out[0][1]["message"]["id"] == "msg_local_1"
    assert out[0][1]["message"]["model"] == "claude-sonnet-4-5"
    assert out[0][1]["message"]["usage"]["input_tokens"] == 50
    md = out[-2][1]
    assert md["delta"]["stop_reason"] == "end_turn"
    assert md["usage"] == {"input_tokens": 50, "output_tokens": 3}
    assert n.finished
    assert n.finish() == []
    assert n.feed("ping", {"type": "ping"}) == []


# --- input_tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("reported", [0, None, -3, "12"])
def test_zero_or_missing_input_tokens_replaced_by_estimate(reported: Any) -> None:
    s = start()
    s[1]["message"]["usage"]["input_tokens"] = reported
    out, _ = run([s, block_start(0, {"type": "text", "text": ""}), stop(0), msg_delta(output_tokens=2), MSG_STOP], estimate=777)
    check_well_formed(out)
    assert out[0][1]["message"]["usage"]["input_tokens"] == 777
    assert out[-2][1]["usage"]["input_tokens"] == 777


def test_input_tokens_reported_late_in_message_delta() -> None:
    out, _ = run([start(0), msg_delta(output_tokens=2, input_tokens=900), MSG_STOP], estimate=5)
    assert out[-2][1]["usage"]["input_tokens"] == 900


def test_estimate_of_zero_still_positive() -> None:
    out, _ = run([start(0), msg_delta(), MSG_STOP], estimate=0)
    assert out[0][1]["message"]["usage"]["input_tokens"] >= 1


def test_missing_message_start_is_synthesised() -> None:
    out, _ = run([block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "x"}), stop(0), msg_delta(), MSG_STOP])
    check_well_formed(out)
    assert out[0][1]["message"]["id"].startswith("msg_")


def test_already_started_suppresses_message_start() -> None:
    n = LocalStreamNormalizer(model="m", input_tokens_estimate=10, started=True)
    assert n.feed(*start(20)) == []
    assert n.input_tokens == 20


# --- content inside content_block_start -------------------------------------------------------


def test_text_inside_start_moves_to_a_delta() -> None:
    out, _ = run([start(9), block_start(0, {"type": "text", "text": "Hi there"}), stop(0), msg_delta(), MSG_STOP])
    check_well_formed(out)
    assert out[1] == block_start(0, {"type": "text", "text": ""})
    assert out[2] == delta(0, {"type": "text_delta", "text": "Hi there"})


def test_tool_input_inside_start_moves_to_input_json_delta() -> None:
    out, _ = run([
        start(9),
        block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"path": "a.py", "n": 2}}),
        stop(0),
        msg_delta("tool_use"),
        MSG_STOP,
    ])
    check_well_formed(out)
    assert out[1] == block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}})
    name, data = out[2]
    assert name == "content_block_delta"
    assert data["delta"]["type"] == "input_json_delta"
    assert orjson.loads(data["delta"]["partial_json"]) == {"path": "a.py", "n": 2}


def test_tool_with_empty_input_in_start_streams_deltas_as_sent() -> None:
    out, _ = run([
        start(9),
        block_start(0, {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}),
        delta(0, {"type": "input_json_delta", "partial_json": '{"pa'}),
        delta(0, {"type": "input_json_delta", "partial_json": 'th": "x"}'}),
        stop(0),
        msg_delta("tool_use"),
        MSG_STOP,
    ])
    check_well_formed(out)
    joined = "".join(d["delta"]["partial_json"] for e, d in out if e == "content_block_delta")
    assert joined == '{"path": "x"}'


# --- tool ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["call:0", "chatcmpl-tool.9f", None, "a b c"])
def test_odd_tool_ids_sanitised_in_stream(raw: Any) -> None:
    out, _ = run([start(9), block_start(0, {"type": "tool_use", "id": raw, "name": "X", "input": {}}), stop(0), msg_delta("tool_use"), MSG_STOP])
    check_well_formed(out)
    assert TOOL_ID.match(out[1][1]["content_block"]["id"])


# --- deltas for blocks that are not open --------------------------------------------------------


def test_deltas_for_unknown_or_closed_blocks_dropped() -> None:
    out, _ = run([
        start(9),
        delta(3, {"type": "text_delta", "text": "never started"}),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, {"type": "text_delta", "text": "ok"}),
        stop(0),
        delta(0, {"type": "text_delta", "text": "after stop"}),
        stop(0),  # a second stop is dropped too
        stop(5),
        msg_delta(),
        MSG_STOP,
    ])
    check_well_formed(out)
    texts = [d["delta"]["text"] for e, d in out if e == "content_block_delta"]
    assert texts == ["ok"]
    assert names(out).count("content_block_stop") == 1


def test_duplicate_block_start_dropped() -> None:
    out, _ = run([
        start(9),
        block_start(0, {"type": "text", "text": ""}),
        block_start(0, {"type": "text", "text": ""}),
        stop(0),
        msg_delta(),
        MSG_STOP,
    ])
    check_well_formed(out)
    assert names(out).count("content_block_start") == 1


def test_blocks_left_open_are_closed_before_message_delta() -> None:
    out, _ = run([
        start(9),
        block_start(0, {"type": "text", "text": "a"}),
        block_start(1, {"type": "tool_use", "id": "t1", "name": "X", "input": {}}),
        msg_delta("tool_use"),
        MSG_STOP,
    ])
    check_well_formed(out)
    assert [d["index"] for e, d in out if e == "content_block_stop"] == [0, 1]


# --- thinking --------------------------------------------------------------------------------


def test_thinking_gets_the_local_signature() -> None:
    out, _ = run([
        start(9),
        block_start(0, {"type": "thinking", "thinking": "first thought", "signature": "bogus"}),
        delta(0, {"type": "thinking_delta", "thinking": " more"}),
        stop(0),
        block_start(1, {"type": "text", "text": ""}),
        delta(1, {"type": "text_delta", "text": "answer"}),
        stop(1),
        msg_delta(),
        MSG_STOP,
    ])
    check_well_formed(out)
    assert out[1] == block_start(0, {"type": "thinking", "thinking": "", "signature": ""})
    assert out[2] == delta(0, {"type": "thinking_delta", "thinking": "first thought"})
    sigs = [d["delta"] for e, d in out if e == "content_block_delta" and d["delta"]["type"] == "signature_delta"]
    assert sigs == [{"type": "signature_delta", "signature": LOCAL_THINKING_SIGNATURE}]
    sig_pos = next(i for i, (e, d) in enumerate(out) if e == "content_block_delta" and d["delta"]["type"] == "signature_delta")
    assert out[sig_pos + 1] == ("content_block_stop", {"type": "content_block_stop", "index": 0})


def test_server_signature_replaced_not_doubled() -> None:
    out, _ = run([
        start(9),
        block_start(0, {"type": "thinking", "thinking": ""}),
        delta(0, {"type": "thinking_delta", "thinking": "t"}),
        delta(0, {"type": "signature_delta", "signature": "server-made"}),
        stop(0),
        msg_delta(),
        MSG_STOP,
    ])
    check_well_formed(out)
    sigs = [d["delta"]["signature"] for e, d in out if e == "content_block_delta" and d["delta"]["type"] == "signature_delta"]
    assert sigs == [LOCAL_THINKING_SIGNATURE]


def test_unclosed_thinking_signed_on_message_delta() -> None:
    out, _ = run([start(9), block_start(0, {"type": "thinking", "thinking": "x"}), msg_delta(), MSG_STOP])
    check_well_formed(out)
    sigs = [d for e, d in out if e == "content_block_delta" and d["delta"]["type"] == "signature_delta"]
    assert len(sigs) == 1


# --- endings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "events",
    [
        [start(9)],
        [start(9), block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "half a sent"})],
        [start(9), block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "x"}), stop(0), MSG_STOP],
        [],
    ],
    ids=["only-start", "mid-block", "message-stop-without-delta", "nothing"],
)
def test_stream_without_message_delta_ends_in_error(events: list[Event]) -> None:
    out, n = run(events)
    assert out, "an empty stream must still say something"
    assert out[-1][0] == "error"
    assert out[-1][1]["type"] == "error"
    assert out[-1][1]["error"]["type"] == "api_error"
    assert out[-1][1]["error"]["message"]
    assert "message_stop" not in names(out)
    assert n.error
    if events:
        check_well_formed(out)


def test_message_delta_without_message_stop_is_completed() -> None:
    out, _ = run([start(9), block_start(0, {"type": "text", "text": "x"}), stop(0), msg_delta()])
    check_well_formed(out)
    assert out[-1] == MSG_STOP


def test_message_delta_without_usage_or_stop_reason() -> None:
    out, _ = run([
        start(9),
        block_start(0, {"type": "text", "text": ""}),
        delta(0, {"type": "text_delta", "text": "x" * 40}),
        stop(0),
        ev({"type": "message_delta", "delta": {}}),
        MSG_STOP,
    ])
    check_well_formed(out)
    md = next(d for e, d in out if e == "message_delta")
    assert md["delta"]["stop_reason"] == "end_turn"
    assert md["usage"]["output_tokens"] == 10


def test_error_event_from_local_server_passes_and_ends() -> None:
    out, n = run([
        start(9),
        ev({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}),
        block_start(0, {"type": "text", "text": "ignored"}),
    ])
    assert out[-1] == ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
    assert names(out) == ["message_start", "error"]
    assert n.finished


def test_error_event_without_detail() -> None:
    out, _ = run([start(9), ev({"type": "error"})])
    assert out[-1][1]["error"] == {"type": "api_error", "message": "local stream error"}


def test_unknown_event_types_dropped() -> None:
    out, _ = run([start(9), ev({"type": "vendor_stats", "tps": 12}), msg_delta(), MSG_STOP])
    assert "vendor_stats" not in names(out)


def test_message_start_helper() -> None:
    name, data = message_start("m", 0, "msg_x")
    assert name == "message_start"
    assert data["message"]["id"] == "msg_x"
    assert data["message"]["usage"]["input_tokens"] == 1


# --- normalize_message -------------------------------------------------------------------------


def test_normalize_message() -> None:
    msg: dict[str, Any] = {
        "id": "chatcmpl-1",
        "type": "whatever",
        "role": "bot",
        "model": "qwen",
        "content": [
            {"type": "thinking", "thinking": "hmm"},
            {"type": "text", "text": "x" * 40},
            {"type": "tool_use", "id": "call:1", "name": "Read", "input": {"p": 1}},
            "junk",
        ],
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    out = normalize_message(msg, model="claude-sonnet-4-5", input_tokens_estimate=321)
    assert out["id"] == "chatcmpl-1"
    assert out["type"] == "message"
    assert out["role"] == "assistant"
    assert out["model"] == "claude-sonnet-4-5"
    assert [b["type"] for b in out["content"]] == ["thinking", "text", "tool_use"]
    assert out["content"][0]["signature"] == LOCAL_THINKING_SIGNATURE
    assert out["content"][2]["id"].startswith("call_1_")
    assert out["usage"]["input_tokens"] == 321
    assert out["usage"]["output_tokens"] > 0
    assert out["stop_reason"] == "tool_use"
    assert out["stop_sequence"] is None
    assert msg["content"][2]["id"] == "call:1", "the input must not be modified"


@pytest.mark.parametrize(
    ("msg", "stop_reason", "usage"),
    [
        ({"content": [{"type": "text", "text": "hi"}]}, "end_turn", {"input_tokens": 50, "output_tokens": 1}),
        (
            {"content": [{"type": "text", "text": "hi"}], "stop_reason": "max_tokens", "usage": {"input_tokens": 7, "output_tokens": 3}},
            "max_tokens",
            {"input_tokens": 7, "output_tokens": 3},
        ),
        ({"content": []}, "end_turn", {"input_tokens": 50, "output_tokens": 1}),
    ],
    ids=["minimal", "kept", "empty"],
)
def test_normalize_message_fills_gaps(msg: dict[str, Any], stop_reason: str, usage: dict[str, int]) -> None:
    out = normalize_message(msg, model="m", input_tokens_estimate=50)
    assert out["stop_reason"] == stop_reason
    assert out["usage"] == usage
    assert out["id"].startswith("msg_")


def test_nonstops_own_output_cap_is_reported_as_end_of_turn():
    from nonstop.wire.local_stream import LocalStreamNormalizer, normalize_message

    def run(capped: bool, tool: bool) -> str:
        n = LocalStreamNormalizer(model="m", input_tokens_estimate=5, capped=capped)
        n.feed("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}})
        block = {"type": "tool_use", "id": "t1", "name": "x", "input": {}} if tool else {"type": "text", "text": ""}
        n.feed("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        n.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 9}})
        return n.stop_reason

    assert run(capped=False, tool=False) == "max_tokens"
    assert run(capped=True, tool=False) == "end_turn"
    assert run(capped=True, tool=True) == "tool_use"
    msg = {"content": [{"type": "text", "text": "hi"}], "stop_reason": "max_tokens", "usage": {"input_tokens": 3, "output_tokens": 2}}
    assert normalize_message(msg, model="m", input_tokens_estimate=3, capped=True)["stop_reason"] == "end_turn"
    assert normalize_message(msg, model="m", input_tokens_estimate=3, capped=False)["stop_reason"] == "max_tokens"


# --- tool input that comes in pieces from an Anthropic-API server --------------------------------


def _tool_stream(pieces: list[str], stop: str = "max_tokens") -> list[tuple[str, dict]]:
    events = [("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}})]
    events += [("content_block_delta", {"type": "content_block_delta", "index": 0,
                                        "delta": {"type": "input_json_delta", "partial_json": p}}) for p in pieces]
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": {"output_tokens": 9}}),
               ("message_stop", {"type": "message_stop"})]
    return events


def _tool_input(pieces: list[str], stop: str = "max_tokens") -> tuple[object, str]:
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=5, capped=True, tools=[{"name": "Read", "input_schema": {}}])
    out = [e for t, d in _tool_stream(pieces, stop) for e in norm.feed(t, d)]
    text = "".join(d["delta"]["partial_json"] for t, d in out
                   if t == "content_block_delta" and d["delta"].get("type") == "input_json_delta")
    [stop] = [d["delta"]["stop_reason"] for t, d in out if t == "message_delta"]
    return (json.loads(text) if text else {}), stop


@pytest.mark.parametrize("pieces,expected,stop", [
    (['{"file_path": "/src/', 'main.py"}'], {"file_path": "/src/main.py"}, "tool_use"),
    # Cut by max_tokens: closed, and the client is told the output limit cut it (as the
    # cloud says it), not that the call is complete, even though nonstop lowered max_tokens.
    (['{"file_path": "/src/ma'], {"file_path": "/src/ma"}, "max_tokens"),
    (['{"a": [1, 2', ', {"b": tr'], {"a": [1, 2, {"b": True}]}, "max_tokens"),
    (['{"a": 1}}}garbage'], {"a": 1}, "tool_use"),
    (["[1, 2]"], {"_raw": "[1, 2]"}, "max_tokens"),  # never an object: its best reading
    ([], {}, "tool_use"),
])
def test_tool_input_in_pieces_always_reaches_the_client_as_one_json_object(pieces, expected, stop):
    assert _tool_input(pieces) == (expected, stop)


@pytest.mark.parametrize("given,expected", [('{"path": "x"}', {"path": "x"}), ("not json", {"_raw": "not json"}),
                                            ({"path": "y"}, {"path": "y"})])
def test_tool_input_given_whole_with_the_start_is_an_object(given, expected):
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=5)
    out = norm.feed("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "tool_use", "id": "t", "name": "Read", "input": given}})
    out += norm.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "input_json_delta", "partial_json": '{"more": 1}'}})
    text = "".join(d["delta"]["partial_json"] for t, d in out if t == "content_block_delta")
    assert json.loads(text) == expected


def test_a_whole_reply_of_odd_types_comes_out_as_a_message_a_client_reads():
    msg = {"content": [{"type": "text", "text": None}, {"type": "text", "text": 5},
                       {"type": "tool_use", "id": "t", "name": "Read", "input": '{"path": "x"}'}],
           "usage": [1, 2], "stop_reason": 7}
    out = normalize_message(msg, model="m", input_tokens_estimate=12)
    assert [b.get("text") for b in out["content"][:2]] == ["", "5"]
    assert out["content"][2]["input"] == {"path": "x"}
    assert out["usage"]["input_tokens"] == 12 and out["usage"]["output_tokens"] >= 1
    assert out["stop_reason"] == "tool_use"


@pytest.mark.parametrize("indexes", [[0, 1, 2], [1, 2, 3], [0, 2, 5], [0, 0, 0]],
                         ids=["in-order", "from-one", "skipping", "reused-after-stop"])
@pytest.mark.parametrize("tools", [None, [{"name": "Read", "input_schema": {}}]], ids=["no-tools", "tools"])
def test_block_indexes_reach_the_client_in_order_whatever_the_server_numbers(indexes, tools):
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=5, tools=tools)
    out: list[Event] = norm.feed("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}})
    for n, i in enumerate(indexes):
        out += norm.feed("content_block_start", {"type": "content_block_start", "index": i,
                                                 "content_block": {"type": "text", "text": ""}})
        out += norm.feed("content_block_delta", {"type": "content_block_delta", "index": i,
                                                 "delta": {"type": "text_delta", "text": f"part {n}. "}})
        out += norm.feed("content_block_stop", {"type": "content_block_stop", "index": i})
    out += norm.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 6}})
    out += norm.feed("message_stop", {"type": "message_stop"})
    starts = [d["index"] for t, d in out if t == "content_block_start"]
    assert starts == [0, 1, 2]
    texts = {d["index"]: d["delta"]["text"] for t, d in out if t == "content_block_delta"}
    assert texts == {0: "part 0. ", 1: "part 1. ", 2: "part 2. "}


def test_input_of_a_block_that_is_not_a_tool_call_passes_as_sent():
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=5)
    out = norm.feed("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}})
    out += norm.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "input_json_delta", "partial_json": '{"query": "x"}'}})
    assert [d["delta"]["partial_json"] for t, d in out if t == "content_block_delta"] == ['{"query": "x"}']


def test_a_cut_call_is_max_tokens_though_a_text_call_was_repaired_beside_it():
    read = '<tool_call>{"name": "Read", "arguments": {"file_path": "a.py"}}</tool_call>'
    tools = [{"name": "Read", "input_schema": {}}, {"name": "Write", "input_schema": {}}]
    norm = LocalStreamNormalizer(model="m", input_tokens_estimate=5, capped=True, tools=tools)
    events = [("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
              ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": read}}),
              ("content_block_stop", {"type": "content_block_stop", "index": 0})]
    events += _tool_stream(['{"path": "a.txt", "content": "li'])[1:]
    events[4][1]["index"] = 1
    for _, d in events[5:8]:
        d["index"] = 1
    out = [e for t, d in events for e in norm.feed(t, d)]
    assert norm.repairs and norm.repairs[0].repaired
    assert [d["delta"]["stop_reason"] for t, d in out if t == "message_delta"] == ["max_tokens"]


@pytest.mark.parametrize("stop", ["tool_use", "end_turn"])
def test_a_call_the_server_left_unclosed_is_not_one_to_run(stop):
    # A server that ends a call mid-input and says tool_use, or end_turn: the block is
    # there either way, and a client runs the blocks it gets unless the limit was hit.
    assert _tool_input(['{"file_path": "/src/ma'], stop=stop)[1] == "max_tokens"


# --- prompt-cache counts ----------------------------------------------------------------


def test_cache_counts_of_the_start_are_passed_on():
    """A server that caches the prompt says so in message_start: the client hears it there
    and in the final usage (Claude Code's cost and context meters read both)."""
    first = start(30)
    first[1]["message"]["usage"].update({"cache_read_input_tokens": 900, "cache_creation_input_tokens": 0})
    out, n = run([first, block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "hi"}),
                  stop(0), msg_delta(), MSG_STOP])
    check_well_formed(out)
    head = out[0][1]["message"]["usage"]
    assert head["cache_read_input_tokens"] == 900 and head["cache_creation_input_tokens"] == 0
    final = next(d for e, d in out if e == "message_delta")["usage"]
    assert final == {"input_tokens": 30, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 0, "output_tokens": 7}
    assert n.cache == {"cache_read_input_tokens": 900, "cache_creation_input_tokens": 0}


def test_cache_counts_known_only_at_the_end_reach_the_final_usage():
    out, _ = run([start(30), block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "hi"}),
                  stop(0), msg_delta(cache_read_input_tokens=512), MSG_STOP])
    final = next(d for e, d in out if e == "message_delta")["usage"]
    assert final["cache_read_input_tokens"] == 512 and "cache_creation_input_tokens" not in final


@pytest.mark.parametrize("bad", ["x", -1, True, 1.5, None, 2**60])
def test_a_cache_count_that_is_no_count_is_left_out(bad: Any):
    first = start(30)
    first[1]["message"]["usage"]["cache_read_input_tokens"] = bad
    out, _ = run([first, block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "hi"}),
                  stop(0), msg_delta(), MSG_STOP])
    assert "cache_read_input_tokens" not in out[0][1]["message"]["usage"]
    assert "cache_read_input_tokens" not in next(d for e, d in out if e == "message_delta")["usage"]


def test_message_start_without_cache_counts_is_as_before():
    assert message_start("m", 5)[1]["message"]["usage"] == {"input_tokens": 5, "output_tokens": 1}


def test_a_prompt_read_whole_from_the_cache_is_not_counted_twice():
    """A server that reports input_tokens 0 beside a cache read: the prompt came from the
    cache; the estimate in its place would count it twice."""
    first = start(0)
    first[1]["message"]["usage"]["cache_read_input_tokens"] = 800
    out, n = run([first, block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "hi"}),
                  stop(0), msg_delta(), MSG_STOP], estimate=900)
    assert out[0][1]["message"]["usage"]["input_tokens"] == 1 and n.input_tokens == 1
    whole = normalize_message({"type": "message", "role": "assistant", "content": [{"type": "text", "text": "hi"}],
                               "usage": {"input_tokens": 0, "cache_read_input_tokens": 800, "output_tokens": 2}},
                              model="m", input_tokens_estimate=900)
    assert whole["usage"]["input_tokens"] == 1 and whole["usage"]["cache_read_input_tokens"] == 800
    # no cache read: a 0 is no count, and the estimate stands
    out, _ = run([start(0), block_start(0, {"type": "text", "text": ""}), delta(0, {"type": "text_delta", "text": "hi"}),
                  stop(0), msg_delta(), MSG_STOP], estimate=900)
    assert out[0][1]["message"]["usage"]["input_tokens"] == 900
