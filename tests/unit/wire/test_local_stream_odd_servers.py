"""A local server's unusual or hostile Anthropic-format stream (or whole reply), as the
normaliser hands it to a strict client: well formed, one block open at a time, each
delta of its block's kind, one message_delta last, tool calls that can be run and said
as such, no local "encrypted" thinking, counts that are counts."""

from __future__ import annotations

from typing import Any

import pytest

from nonstop.wire.anthropic import Event
from nonstop.wire.local_stream import LocalStreamNormalizer, normalize_message
from nonstop.wire.tool_ids import LOCAL_PREFIX
from tests.support import wirecheck
from tests.support.anthropic_stream import validate_anthropic_stream
from tests.support.inprocess import serve  # noqa: F401, F811  (the fixture, for the relay test)
from tests.unit.wire.test_local_stream import block_start, delta, ev, msg_delta, stop

TAG = "abc123"
TOOLS = [{"name": "Read", "description": "read a file",
          "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]


def start(input_tokens: int = 40) -> Event:
    return ev({"type": "message_start", "message": {
        "id": "msg_local_1", "type": "message", "role": "assistant", "model": "qwen", "content": [],
        "usage": {"input_tokens": input_tokens, "output_tokens": 0}}})


MSG_STOP = ev({"type": "message_stop"})


def run(events: list[Event], *, tools: list[dict[str, Any]] | None = None) -> list[Event]:
    """The events a client gets for the server's `events`, as the relay drives the
    normaliser (each event fed, then finish() at the stream's end)."""
    norm = LocalStreamNormalizer(model="claude-sonnet-4-5", input_tokens_estimate=1234, tag=TAG, tools=tools)
    out: list[Event] = []
    for name, data in events:
        out.extend(norm.feed(name, data))
    out.extend(norm.finish())
    return out


def sdk_message(out: list[Event]) -> Any:
    """The message the official anthropic SDK builds from these events (its own stream
    accumulator, as `client.messages.stream(...)` uses it); pings are dropped by its
    transport before they reach the accumulator."""
    from anthropic.lib.streaming._messages import accumulate_event

    snapshot = None
    bufs: dict[int, bytes] = {}
    for name, data in out:
        if name == "ping":
            continue
        snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=bufs)  # type: ignore[arg-type]
    return snapshot


# --- deltas whose payload or type does not fit the block --------------------------------------------


def test_a_text_delta_whose_text_is_null_does_not_crash_the_sdk() -> None:
    """A text_delta with `"text": null` is dropped: the official SDK would add None to the text
    and raise mid-stream."""
    out = run([start(), block_start(0, {"type": "text", "text": ""}),
               delta(0, {"type": "text_delta", "text": "Hello"}),
               delta(0, {"type": "text_delta", "text": None}),
               stop(0), msg_delta(), MSG_STOP])
    assert sdk_message(out).content[0].text == "Hello"  # TypeError inside the SDK today
    validate_anthropic_stream(out)


def test_a_thinking_delta_whose_thinking_is_null_does_not_crash_the_sdk() -> None:
    """A thinking_delta with `"thinking": null` is dropped, for the same reason."""
    out = run([start(), block_start(0, {"type": "thinking", "thinking": ""}),
               delta(0, {"type": "thinking_delta", "thinking": "let me see"}),
               delta(0, {"type": "thinking_delta", "thinking": None}),
               stop(0), block_start(1, {"type": "text", "text": "ok"}), stop(1), msg_delta(), MSG_STOP])
    assert sdk_message(out).content[0].thinking == "let me see"  # TypeError inside the SDK today
    validate_anthropic_stream(out)


@pytest.mark.parametrize("block,bad", [
    ({"type": "tool_use", "id": "call_1", "name": "Read", "input": {}}, {"type": "text_delta", "text": "oops"}),
    ({"type": "text", "text": ""}, {"type": "signature_delta", "signature": "sig"}),
    ({"type": "text", "text": ""}, {"type": "thinking_delta", "thinking": "hm"}),
    ({"type": "thinking", "thinking": ""}, {"type": "text_delta", "text": "visible?"}),
], ids=["text-delta-on-tool", "signature-on-text", "thinking-on-text", "text-on-thinking"])
def test_a_delta_of_another_blocks_kind_is_not_passed_on(block: dict[str, Any], bad: dict[str, Any]) -> None:
    """A delta of another kind of block (a text_delta in a tool_use block, a signature_delta or
    a thinking_delta in a text block, a text_delta in a thinking block) is dropped: the API
    never sends such a mix, and clients would read it wrongly."""
    out = run([start(), block_start(0, block), delta(0, bad), stop(0),
               msg_delta("tool_use" if block["type"] == "tool_use" else "end_turn"), MSG_STOP], tools=None)
    validate_anthropic_stream(out)


def test_an_input_json_delta_on_a_text_block_is_not_passed_on() -> None:
    """Without offered tools, an input_json_delta for a text block is dropped, not JSON
    fragments in a text block."""
    out = run([start(), block_start(0, {"type": "text", "text": "hi"}),
               delta(0, {"type": "input_json_delta", "partial_json": '{"a": 1}'}), stop(0), msg_delta(), MSG_STOP])
    validate_anthropic_stream(out)


# --- block structure --------------------------------------------------------------------------------


def test_a_block_the_server_never_stopped_is_closed_before_the_next_starts() -> None:
    """A block the server never closed (a thinking block left open when the answer begins) is
    closed before the next one starts: one block open at a time."""
    out = run([start(), block_start(0, {"type": "thinking", "thinking": ""}),
               delta(0, {"type": "thinking_delta", "thinking": "hmm"}),
               block_start(1, {"type": "text", "text": ""}), delta(1, {"type": "text_delta", "text": "answer"}),
               stop(1), msg_delta(), MSG_STOP])
    validate_anthropic_stream(out)


def test_a_tool_block_started_on_an_open_text_index_is_not_lost() -> None:
    """A server that reuses an index it never closed for another kind of block (text at 0,
    then a tool_use at 0): the text block ends, and the call is a call, not JSON in the text."""
    out = run([start(), block_start(0, {"type": "text", "text": "Reading it."}),
               block_start(0, {"type": "tool_use", "id": "c1", "name": "Read", "input": {}}),
               delta(0, {"type": "input_json_delta", "partial_json": '{"file_path": "a.py"}'}),
               stop(0), msg_delta("tool_use"), MSG_STOP])
    validate_anthropic_stream(out)
    assert any(d.get("content_block", {}).get("type") == "tool_use" for t, d in out if t == "content_block_start")


def test_content_after_message_delta_does_not_follow_the_message_delta() -> None:
    """A server that sends message_delta before (more of) its content: the content goes first
    and message_delta last, with the stop reason read for all of it."""
    out = run([start(), msg_delta("tool_use"),
               block_start(0, {"type": "tool_use", "id": "c1", "name": "Read", "input": {"file_path": "a.py"}}),
               stop(0), MSG_STOP])
    validate_anthropic_stream(out)


def test_a_second_message_delta_is_not_relayed() -> None:
    """Two message_delta events (one with the stop reason, one with the usage) reach the client
    as one, with the latest usage."""
    out = run([start(), block_start(0, {"type": "text", "text": "hi"}), stop(0),
               msg_delta("end_turn", 3), msg_delta(None, 9), MSG_STOP])
    validate_anthropic_stream(out)
    assert [d["usage"]["output_tokens"] for t, d in out if t == "message_delta"] == [9]


# --- stop reasons -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["end_turn", "stop_sequence", "pause_turn", "refusal"])
def test_a_stream_with_a_tool_call_says_tool_use(reason: str) -> None:
    """A whole tool call with another known stop reason (end_turn, stop_sequence, pause_turn,
    refusal) says tool_use: a client that acts on stop_reason runs the call, and the history
    does not keep a tool_use without its result."""
    out = run([start(), block_start(0, {"type": "tool_use", "id": "c1", "name": "Read", "input": {"file_path": "a.py"}}),
               stop(0), msg_delta(reason), MSG_STOP])
    validate_anthropic_stream(out)


@pytest.mark.parametrize("reason", ["end_turn", "stop_sequence"])
def test_a_whole_reply_with_a_tool_call_says_tool_use(reason: str) -> None:
    """The same for a whole reply."""
    msg = {"id": "msg_1", "content": [{"type": "tool_use", "id": "c1", "name": "Read", "input": {"file_path": "a.py"}}],
           "stop_reason": reason, "usage": {"input_tokens": 10, "output_tokens": 5}}
    out = normalize_message(msg, model="m", input_tokens_estimate=10, tag=TAG)
    assert out["stop_reason"] == "tool_use"


# --- blocks a local server should not hand the client ---------------------------------------------


def test_a_redacted_thinking_block_from_a_local_server_is_not_relayed() -> None:
    """A local server's redacted_thinking block is dropped: its data was not encrypted by the
    cloud, and in the next turn's history the cloud would refuse it."""
    out = run([start(), block_start(0, {"type": "redacted_thinking", "data": "bG9jYWw="}), stop(0),
               block_start(1, {"type": "text", "text": "answer"}), stop(1), msg_delta(), MSG_STOP])
    validate_anthropic_stream(out)


def test_a_whole_reply_keeps_no_redacted_thinking_from_a_local_server() -> None:
    """The same in a whole reply."""
    msg = {"content": [{"type": "redacted_thinking", "data": "bG9jYWw="}, {"type": "text", "text": "answer"}],
           "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 5}}
    out = normalize_message(msg, model="m", input_tokens_estimate=10, tag=TAG)
    assert [b["type"] for b in out["content"]] != ["redacted_thinking", "text"]


def test_a_tool_call_without_a_name_is_not_relayed_as_a_call() -> None:
    """A tool_use block without a name is dropped: a call to no tool cannot be run."""
    out = run([start(), block_start(0, {"type": "tool_use", "id": "c1", "input": {"file_path": "a.py"}}), stop(0),
               msg_delta("tool_use"), MSG_STOP])
    for t, d in out:
        if t == "content_block_start" and d["content_block"]["type"] == "tool_use":
            assert d["content_block"]["id"].startswith(LOCAL_PREFIX)
    validate_anthropic_stream(out)


# --- whole replies ------------------------------------------------------------------------------


def test_a_whole_reply_has_a_message_id_and_string_thinking() -> None:
    """A whole reply has a message id (a null one is replaced) and thinking blocks whose
    thinking is text."""
    msg = {"id": None, "content": [{"type": "thinking", "thinking": None}, {"type": "thinking"},
                                   {"type": "text", "text": "answer"}],
           "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 5}}
    out = normalize_message(msg, model="m", input_tokens_estimate=10, tag=TAG)
    assert isinstance(out["id"], str) and out["id"]
    assert all(isinstance(b.get("thinking"), str) for b in out["content"] if b["type"] == "thinking")


def test_a_whole_reply_carries_no_usage_counts_that_are_not_counts() -> None:
    """A whole reply's other usage counts are counts or absent (a string or a negative cache
    count would corrupt Claude Code's context meter)."""
    msg = {"content": [{"type": "text", "text": "answer"}], "stop_reason": "end_turn",
           "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": "x",
                     "cache_creation_input_tokens": -5}}
    out = normalize_message(msg, model="m", input_tokens_estimate=10, tag=TAG)
    for key, value in out["usage"].items():
        if key.endswith("_tokens"):
            assert isinstance(value, int) and value >= 0, (key, value)


def test_a_stop_sequence_goes_only_with_stop_reason_stop_sequence() -> None:
    """stop_sequence is set only with stop_reason stop_sequence (an unknown reason with a stop
    sequence, "eos" + "</s>", is end_turn with none)."""
    msg = {"content": [{"type": "text", "text": "answer"}], "stop_reason": "eos", "stop_sequence": "</s>",
           "usage": {"input_tokens": 10, "output_tokens": 5}}
    whole = normalize_message(msg, model="m", input_tokens_estimate=10, tag=TAG)
    out = run([start(), block_start(0, {"type": "text", "text": "answer"}), stop(0),
               ev({"type": "message_delta", "delta": {"stop_reason": "eos", "stop_sequence": "</s>"},
                   "usage": {"output_tokens": 3}}), MSG_STOP])
    md = next(d for t, d in out if t == "message_delta")
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("end_turn", None)
    assert (md["delta"]["stop_reason"], md["delta"]["stop_sequence"]) == ("end_turn", None)


# --- usage ------------------------------------------------------------------------------------------


def test_a_ping_before_message_start_keeps_the_servers_message_start() -> None:
    """A ping before message_start does not start the message: the server's own message_start
    (its id, its count of the prompt) still does."""
    out = run([ev({"type": "ping"}), start(40), block_start(0, {"type": "text", "text": "hi"}), stop(0),
               msg_delta(), MSG_STOP])
    validate_anthropic_stream(out)
    ms = next(d for t, d in out if t == "message_start")
    assert ms["message"]["usage"]["input_tokens"] == 40


# --- the relay: hand-over before any content --------------------------------------------------------


async def test_a_held_tool_call_cut_by_an_error_event_hands_the_message_over(serve, monkeypatch) -> None:  # noqa: F811
    """A tool call written as text is held back, then the server sends an error: nothing but
    the start reached the client, so the next backend takes the message over, as when the
    same stream is cut."""
    from tests.unit.backends.test_local_late import (
        ERROR,
        PROMPT,
        START,
        WITH_TOOLS,
        _late_stream,
        _server,
        _text,
    )

    app = _server(START + _text(0, '<tool_call>\n{"name": "Read", "arguments": {"file_pa') + ERROR)
    got = await _late_stream(serve, monkeypatch, app, commit_after=PROMPT, request=WITH_TOOLS)
    assert wirecheck.check_anthropic_stream(got.body).outcome == "ok", got.body[-400:]
    assert b"from next" in got.body and b"event: error" not in got.body
    assert got.reply.backend == "next"
