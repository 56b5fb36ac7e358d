"""Checks an Anthropic Messages event sequence against what strict clients require
(wire-facts §3). Used by golden and property tests of every translator that produces
Anthropic events."""

from __future__ import annotations

import json
import re
from typing import Any

STOP_REASONS = frozenset({
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
    "model_context_window_exceeded",
})
TOOL_ID = re.compile(r"[a-zA-Z0-9_-]+")
DELTAS_FOR = {
    "text": {"text_delta"},
    "tool_use": {"input_json_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
}


class StreamError(AssertionError):
    pass


def validate_anthropic_stream(events: list[tuple[str, dict[str, Any]]], *, allow_error: bool = False) -> None:
    """Raise StreamError naming the first broken rule. `allow_error`: the stream may end
    with an `error` event instead of message_delta + message_stop."""

    def fail(i: int, why: str) -> None:
        raise StreamError(f"event {i} ({events[i][0] if i < len(events) else '-'}): {why}")

    if not events:
        raise StreamError("empty stream")
    for i, (etype, data) in enumerate(events):
        if not isinstance(data, dict) or data.get("type") != etype:
            fail(i, f"data type {data.get('type') if isinstance(data, dict) else data!r} != event type")

    etype, data = events[0]
    if etype != "message_start":
        fail(0, "the first event must be message_start")
    message = data.get("message") or {}
    if message.get("content") != []:
        fail(0, "message_start must carry empty content")
    input_tokens = (message.get("usage") or {}).get("input_tokens")
    if not isinstance(input_tokens, int) or input_tokens <= 0:
        fail(0, f"message_start input_tokens must be a positive int, got {input_tokens!r}")

    blocks: dict[int, str] = {}  # index -> block type, for every block ever started
    open_index: int | None = None
    signed: set[int] = set()
    tool_json: dict[int, list[str]] = {}
    delta_seen = False
    stopped = False
    for i in range(1, len(events)):
        etype, data = events[i]
        if stopped:
            fail(i, "nothing may follow message_stop")
        if etype == "ping":
            continue
        if etype == "error":
            if not allow_error:
                fail(i, "unexpected error event")
            if i != len(events) - 1:
                fail(i, "an error event must be the last")
            return
        if delta_seen and etype != "message_stop":
            fail(i, "only message_stop may follow message_delta")
        if etype == "content_block_start":
            index = data.get("index")
            if index != len(blocks):
                fail(i, f"block index {index!r}, expected {len(blocks)} (consecutive from 0)")
            if open_index is not None:
                fail(i, f"block {open_index} is still open")
            block = data.get("content_block") or {}
            btype = block.get("type")
            if btype == "text":
                if block.get("text") != "":
                    fail(i, "text must come as deltas, not inside content_block_start")
            elif btype == "tool_use":
                if block.get("input") != {}:
                    fail(i, "tool input must come as deltas; content_block_start has input {}")
                if not isinstance(block.get("id"), str) or not TOOL_ID.fullmatch(block["id"]):
                    fail(i, f"tool id {block.get('id')!r} does not match ^[a-zA-Z0-9_-]+$")
                if not isinstance(block.get("name"), str) or not block["name"]:
                    fail(i, "tool_use needs a name")
                tool_json[index] = []
            elif btype == "thinking":
                if block.get("thinking") != "":
                    fail(i, "thinking must come as deltas")
            else:
                fail(i, f"unexpected block type {btype!r}")
            blocks[index] = btype
            open_index = index
        elif etype == "content_block_delta":
            index = data.get("index")
            if index not in blocks:
                fail(i, f"delta for block {index!r} that was never started")
            if index != open_index:
                fail(i, f"delta for block {index} after its stop")
            delta = data.get("delta") or {}
            dtype = delta.get("type")
            if dtype not in DELTAS_FOR[blocks[index]]:
                fail(i, f"{dtype!r} delta in a {blocks[index]} block")
            field = {"text_delta": "text", "input_json_delta": "partial_json",
                     "thinking_delta": "thinking", "signature_delta": "signature"}[dtype]
            if not isinstance(delta.get(field), str):
                fail(i, f"{dtype}.{field} must be a string")
            if dtype == "input_json_delta":
                tool_json[index].append(delta["partial_json"])
            elif dtype == "signature_delta":
                signed.add(index)
        elif etype == "content_block_stop":
            index = data.get("index")
            if index != open_index:
                fail(i, f"stop for block {index!r}, which is not open")
            if blocks[index] == "tool_use":
                text = "".join(tool_json[index])
                try:
                    value = json.loads(text)
                except ValueError:
                    fail(i, f"tool input does not parse as JSON: {text!r}")
                if not isinstance(value, dict):
                    fail(i, f"tool input is not an object: {text!r}")
            if blocks[index] == "thinking" and index not in signed:
                fail(i, "thinking block closed without a signature_delta")
            open_index = None
        elif etype == "message_delta":
            if open_index is not None:
                fail(i, f"message_delta while block {open_index} is open")
            reason = (data.get("delta") or {}).get("stop_reason")
            if reason not in STOP_REASONS:
                fail(i, f"stop_reason {reason!r} is not valid")
            if "tool_use" in blocks.values() and reason != "tool_use":
                fail(i, f"a tool block exists, so stop_reason must be tool_use, not {reason!r}")
            usage = data.get("usage") or {}
            if not isinstance(usage.get("output_tokens"), int) or usage["output_tokens"] < 0:
                fail(i, "message_delta usage.output_tokens must be an int")
            delta_seen = True
        elif etype == "message_stop":
            if not delta_seen:
                fail(i, "message_stop before message_delta")
            stopped = True
        else:
            fail(i, f"unknown event type {etype!r}")
    if not stopped:
        raise StreamError("the stream does not end with message_delta + message_stop")
